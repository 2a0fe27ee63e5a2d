// boundary.h: the argument checks both Python modules (_core, _cuda) apply at the boundary.
// Every array must have the exact dtype and shape, be C-contiguous and aligned; messages name
// the argument and give expected vs actual ("w_hh: expected shape (512, 128) float32, got
// (512, 64) float32").
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmcore/lstm.h"

namespace lstmcore::boundary {

namespace py = pybind11;

// Marks a context in use for the lifetime of a call (`busy` is the context's flag): a second
// call on the same context from another thread, while the first computes with the GIL
// released, raises instead of overwriting (or freeing) what the first one reads.
class InUse {
 public:
  explicit InUse(std::atomic<bool>& busy) : busy_(busy) {
    if (busy_.exchange(true, std::memory_order_acquire)) {
      throw std::invalid_argument(
          "ctx: in use by another thread's lstm_forward or lstm_backward right now (a context "
          "serves one call at a time: give each thread its own)");
    }
  }
  ~InUse() { busy_.store(false, std::memory_order_release); }
  InUse(const InUse&) = delete;
  InUse& operator=(const InUse&) = delete;

 private:
  std::atomic<bool>& busy_;
};

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
  if (!py::isinstance<py::array>(obj)) fail(name, "a numpy array", obj);
  auto a = py::reinterpret_borrow<py::array>(obj);
  if ((!a.dtype().is(dt) && !a.dtype().equal(dt)) || shape_of(a) != shape) {
    // the message is built only here: naming a dtype goes through Python (a few microseconds,
    // dozens of arguments a training step)
    fail(name, "shape " + shape_str(shape) + " " + dtype_str(dt), obj);
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
  }
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
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

inline bool is_float32(const py::dtype& dt) { return dt.equal(py::dtype::of<float>()); }

// The dtype every argument of a call must share: x's, which must be float32 or float64 with
// three dimensions (T, B, I).
inline py::dtype float_dtype_of(const py::handle& x) {
  if (!py::isinstance<py::array>(x)) fail("x", "a numpy array of float32 or float64", x);
  auto a = py::reinterpret_borrow<py::array>(x);
  py::dtype dt = a.dtype();
  if (!is_float32(dt) && !dt.equal(py::dtype::of<double>())) {
    fail("x", "dtype float32 or float64", x);
  }
  if (a.ndim() != 3) fail("x", "3 dimensions (T, B, I)", x);
  return dt;
}

// A forward call's arguments, every one checked (dtype, shape, layout) before anything is
// allocated or any reused buffer is touched. The arrays are held so their data stays valid.
template <typename S>
struct ForwardArgs {
  Dims d;
  py::array x, w_ih, w_hh, bias;
  const S* h0 = nullptr;  // (B, H) or null
  const S* c0 = nullptr;  // (B, H) or null
};

template <typename S>
ForwardArgs<S> forward_args(const py::object& x, const py::object& h0, const py::object& c0,
                            const py::object& w_ih, const py::object& w_hh,
                            const py::object& bias, const py::dtype& dt) {
  if (!py::isinstance<py::array>(w_hh) || py::reinterpret_borrow<py::array>(w_hh).ndim() != 2) {
    fail("w_hh", "a 2-d array (4H, H)", w_hh);
  }
  auto xa = py::reinterpret_borrow<py::array>(x);
  ForwardArgs<S> a;
  a.d = Dims{static_cast<std::int64_t>(xa.shape(0)), static_cast<std::int64_t>(xa.shape(1)),
             static_cast<std::int64_t>(xa.shape(2)),
             static_cast<std::int64_t>(py::reinterpret_borrow<py::array>(w_hh).shape(1))};
  lstmcore::check_dims(a.d);
  const Dims& d = a.d;
  const std::int64_t G = 4 * d.H;
  a.x = require(x, "x", {d.T, d.B, d.I}, dt);
  a.w_ih = require(w_ih, "w_ih", {G, d.I}, dt);
  a.w_hh = require(w_hh, "w_hh", {G, d.H}, dt);
  a.bias = require(bias, "bias", {G}, dt);
  a.h0 = data_or_null<S>(h0, "h0", {d.B, d.H}, dt);
  a.c0 = data_or_null<S>(c0, "c0", {d.B, d.H}, dt);
  return a;
}

// A backward call's incoming gradients, checked against the forward pass's sizes and dtype.
template <typename S>
struct GradArgs {
  const S* dy = nullptr;    // (T, B, H) or null
  const S* dh_n = nullptr;  // (B, H) or null
  const S* dc_n = nullptr;  // (B, H) or null
};

template <typename S>
GradArgs<S> grad_args(const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                      const Dims& d, const py::dtype& dt) {
  GradArgs<S> g;
  g.dy = data_or_null<S>(dy, "dy", {d.T, d.B, d.H}, dt);
  g.dh_n = data_or_null<S>(dh_n, "dh_n", {d.B, d.H}, dt);
  g.dc_n = data_or_null<S>(dc_n, "dc_n", {d.B, d.H}, dt);
  return g;
}

}  // namespace lstmcore::boundary
