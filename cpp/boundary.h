// boundary.h: the argument checks both Python modules (_core, _cuda) apply at the boundary.
// Every array must have the exact dtype and shape, be C-contiguous and aligned; messages name
// the argument and give expected vs actual ("w_hh: expected shape (512, 128) float32, got
// (512, 64) float32").
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lstmcore::boundary {

namespace py = pybind11;

using Shape = std::vector<std::int64_t>;

inline std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (std::size_t k = 0; k < s.size(); ++k) o << (k ? ", " : "") << s[k];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

inline Shape shape_of(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}

inline std::string dtype_str(const py::dtype& dt) { return py::str(dt).cast<std::string>(); }

inline std::string describe(const py::handle& obj) {
  if (obj.is_none()) return "None";
  if (!py::isinstance<py::array>(obj)) return py::str(py::type::of(obj).attr("__name__"));
  auto a = py::reinterpret_borrow<py::array>(obj);
  return shape_str(shape_of(a)) + " " + dtype_str(a.dtype());
}

[[noreturn]] inline void fail(const char* name, const std::string& expected, const py::handle& got) {
  throw std::invalid_argument(std::string(name) + ": expected " + expected + ", got " +
                              describe(got));
}

// Checks one array argument against the exact dtype and shape; returns it.
inline py::array require(const py::handle& obj, const char* name, const Shape& shape,
                  const py::dtype& dt) {
  const std::string expected = "shape " + shape_str(shape) + " " + dtype_str(dt);
  if (!py::isinstance<py::array>(obj)) fail(name, "a numpy array", obj);
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(dt) && !a.dtype().equal(dt)) fail(name, expected, obj);
  if (shape_of(a) != shape) fail(name, expected, obj);
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
  }
  if (!a.attr("flags").attr("aligned").cast<bool>()) {
    throw std::invalid_argument(std::string(name) + ": expected an aligned array");
  }
  return a;
}

template <typename S>
const S* data_or_null(const py::object& obj, const char* name, const Shape& shape,
                      const py::dtype& dt) {
  if (obj.is_none()) return nullptr;
  return static_cast<const S*>(require(obj, name, shape, dt).data());
}

}  // namespace lstmcore::boundary
