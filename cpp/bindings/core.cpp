// core.cpp: the Python module lstmcore._core.
//
// The boundary is strict: every array must already have the expected dtype, ndim, shape,
// C-contiguous layout and alignment (the Python layer converts once, on purpose). Messages name
// the argument and give expected vs actual. Pointers are read with the GIL held; the compute
// runs with it released. Inputs are never written (adam_update's p, m and v excepted: it updates
// them in place); outputs are fresh arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "boundary.h"
#include "lstmcore/batch.h"
#include "lstmcore/classifier.h"
#include "lstmcore/lstm.h"
#include "lstmcore/optim.h"

namespace py = pybind11;
using lstmcore::Dims;
using namespace lstmcore::boundary;  // NOLINT: Shape, require, describe, fail, ...

namespace {

template <typename S>
S* mut(py::array& a) {
  return static_cast<S*>(a.mutable_data());
}

py::array empty(const Shape& shape, const py::dtype& dt) { return py::array(dt, shape); }

// What forward keeps for backward. Holds references to the inputs backward reads (x and the
// weights: changing them between forward and backward changes the gradients, as in any
// autograd) and owns the cache buffers.
struct ForwardContext {
  Dims dims;
  py::dtype dtype;
  bool reverse = false;
  bool has_cache = true;  // false after a forward with need_cache=False: no backward from it
  lstmcore::Precision precision = lstmcore::Precision::kNative;  // backward runs the same rule
  std::vector<std::int64_t> batch_sizes;  // (T,), or empty: every row runs every step
  py::array x, w_ih, w_hh;
  // where x, w_ih and w_hh lay when forward read them: an array resized in place
  // (ndarray.resize(refcheck=False)) moves its data, and backward must not read the old place
  const void* x_data = nullptr;
  const void* w_ih_data = nullptr;
  const void* w_hh_data = nullptr;
  py::array gates, h_all, c_all, tanh_c;
  py::object dgates;  // backward's (T, B, 4H) scratch, made on first use (null until then)
  // forward passes that have filled these buffers: a Python context made by an earlier pass
  // (before a reuse=) is stale once this moves on
  std::uint64_t generation = 0;
  // set while a call computes on the buffers with the GIL released: a second call on the
  // same context from another thread would overwrite (or free) what the first one reads
  std::atomic<bool> busy{false};
};

// Throws unless `a` still has the shape and data address forward recorded.
void check_unmoved(const py::array& a, const void* recorded, const char* name,
                   std::int64_t rows, std::int64_t cols) {
  const bool same_place = a.data() == recorded;
  const bool same_shape = a.ndim() >= 2 && a.size() == rows * cols;
  if (!same_place || !same_shape) {
    throw std::invalid_argument(std::string(name) +
                                ": was resized or reallocated after lstm_forward (its data "
                                "moved); run the forward pass again");
  }
}

std::int64_t dim(const py::array& a, int k) { return static_cast<std::int64_t>(a.shape(k)); }

bool same_shape(const ForwardContext& c, const Dims& d, const py::dtype& dt) {
  return c.dims.T == d.T && c.dims.B == d.B && c.dims.I == d.I && c.dims.H == d.H &&
         c.dtype.equal(dt);
}

// The context to fill: `reuse` (an earlier context of the same shapes, whose buffers are
// overwritten, so nothing is allocated) or a new one.
py::object context_for(const py::object& reuse, const Dims& d, const py::dtype& dt) {
  if (!reuse.is_none()) {
    if (!py::isinstance<ForwardContext>(reuse)) fail("reuse", "a ForwardContext or None", reuse);
    if (same_shape(reuse.cast<const ForwardContext&>(), d, dt)) return reuse;
  }
  auto fresh = std::make_unique<ForwardContext>();
  fresh->dims = d;
  fresh->dtype = dt;
  fresh->gates = empty({d.T, d.B, 4 * d.H}, dt);
  fresh->h_all = empty({d.T + 1, d.B, d.H}, dt);
  fresh->c_all = empty({d.T + 1, d.B, d.H}, dt);
  fresh->tanh_c = empty({d.T, d.B, d.H}, dt);
  return py::cast(std::move(fresh));
}

// "native" or "bf16" (see lstm.h); ops maps the Python-side names onto these
lstmcore::Precision precision_arg(const std::string& name) {
  if (name == "native") return lstmcore::Precision::kNative;
  if (name == "bf16") return lstmcore::Precision::kBf16;
  throw std::invalid_argument("precision: expected 'native' or 'bf16', got '" + name + "'");
}

const char* precision_name(lstmcore::Precision p) {
  return p == lstmcore::Precision::kBf16 ? "bf16" : "native";
}

// batch_sizes: None, or (T,) int64, non-increasing, within [0, B] (see lstm.h)
std::vector<std::int64_t> batch_sizes_arg(const py::object& obj, const Dims& d) {
  if (obj.is_none()) return {};
  py::array a = require(obj, "batch_sizes", {d.T}, py::dtype::of<std::int64_t>());
  const auto* p = static_cast<const std::int64_t*>(a.data());
  std::vector<std::int64_t> sizes(p, p + d.T);
  lstmcore::check_batch_sizes(sizes.data(), d);
  return sizes;
}

template <typename S>
py::tuple forward_impl(const py::object& x, const py::object& h0, const py::object& c0,
                       const py::object& w_ih, const py::object& w_hh, const py::object& bias,
                       const py::dtype& dt, const py::object& reuse, bool need_y, bool reverse,
                       const py::object& batch_sizes_obj, bool need_cache,
                       lstmcore::Precision precision) {
  // every argument is checked before a reused context is touched
  const auto args = forward_args<S>(x, h0, c0, w_ih, w_hh, bias, dt);
  if (precision == lstmcore::Precision::kBf16 && !is_float32(dt)) {
    throw std::invalid_argument("precision: bf16 runs on float32 arrays, got float64");
  }
  const Dims& d = args.d;
  std::vector<std::int64_t> batch_sizes = batch_sizes_arg(batch_sizes_obj, d);

  py::object ctx_obj = context_for(reuse, d, dt);
  auto& ctx = ctx_obj.cast<ForwardContext&>();
  const InUse in_use(ctx.busy);  // before anything of a reused context is touched
  ctx.x = args.x;
  ctx.w_ih = args.w_ih;
  ctx.w_hh = args.w_hh;
  ctx.x_data = args.x.data();
  ctx.w_ih_data = args.w_ih.data();
  ctx.w_hh_data = args.w_hh.data();
  ++ctx.generation;
  ctx.reverse = reverse;
  ctx.precision = precision;
  ctx.has_cache = need_cache;
  ctx.batch_sizes = std::move(batch_sizes);
  py::array y;  // a placeholder (never written) when y is not wanted
  if (need_y) y = empty({d.T, d.B, d.H}, dt);
  py::array h_n = empty({d.B, d.H}, dt);
  py::array c_n = empty({d.B, d.H}, dt);

  // inference (need_cache=False): the core writes only the states, never the gates
  const lstmcore::LstmCache<S> cache{mut<S>(ctx.gates), mut<S>(ctx.h_all), mut<S>(ctx.c_all),
                                     need_cache ? mut<S>(ctx.tanh_c) : nullptr};
  const S* xp = static_cast<const S*>(args.x.data());
  const S* w_ihp = static_cast<const S*>(args.w_ih.data());
  const S* w_hhp = static_cast<const S*>(args.w_hh.data());
  const S* biasp = static_cast<const S*>(args.bias.data());
  const std::int64_t* sizes = ctx.batch_sizes.empty() ? nullptr : ctx.batch_sizes.data();
  S* yp = need_y ? mut<S>(y) : nullptr;
  S* hnp = mut<S>(h_n);
  S* cnp = mut<S>(c_n);
  {
    py::gil_scoped_release nogil;
    lstmcore::lstm_forward<S>(cache, xp, args.h0, args.c0, w_ihp, w_hhp, biasp, d, reverse,
                              sizes, precision);
    const std::size_t bh = static_cast<std::size_t>(d.B * d.H);
    if (bh > 0) {
      if (yp != nullptr) lstmcore::lstm_collect_y<S>(yp, cache.h_all, d, reverse, sizes);
      const std::size_t last = bh * static_cast<std::size_t>(lstmcore::final_slot(d, reverse));
      std::memcpy(hnp, cache.h_all + last, sizeof(S) * bh);
      std::memcpy(cnp, cache.c_all + last, sizeof(S) * bh);
    }
  }
  py::object y_out = need_y ? py::object(y) : py::object(py::none());
  return py::make_tuple(y_out, h_n, c_n, ctx_obj);
}

py::tuple forward(const py::object& x, const py::object& h0, const py::object& c0,
                  const py::object& w_ih, const py::object& w_hh, const py::object& bias,
                  const py::object& reuse, bool need_y, bool reverse,
                  const py::object& batch_sizes, bool need_cache, const std::string& precision) {
  const py::dtype dt = float_dtype_of(x);
  const lstmcore::Precision p = precision_arg(precision);
  if (is_float32(dt)) {
    return forward_impl<float>(x, h0, c0, w_ih, w_hh, bias, dt, reuse, need_y, reverse,
                               batch_sizes, need_cache, p);
  }
  return forward_impl<double>(x, h0, c0, w_ih, w_hh, bias, dt, reuse, need_y, reverse,
                              batch_sizes, need_cache, p);
}

template <typename S>
py::tuple backward_impl(ForwardContext& ctx, const py::object& dy_obj,
                        const py::object& dh_n_obj, const py::object& dc_n_obj, bool need_dx) {
  const InUse in_use(ctx.busy);
  if (!ctx.has_cache) {
    throw std::invalid_argument(
        "ctx: comes from a forward pass with need_cache=False (inference): nothing was kept "
        "for backward");
  }
  const Dims& d = ctx.dims;
  const py::dtype& dt = ctx.dtype;
  const std::int64_t G = 4 * d.H;
  const auto in = grad_args<S>(dy_obj, dh_n_obj, dc_n_obj, d, dt);
  check_unmoved(ctx.x, ctx.x_data, "x", d.T * d.B, d.I);
  check_unmoved(ctx.w_ih, ctx.w_ih_data, "w_ih", G, d.I);
  check_unmoved(ctx.w_hh, ctx.w_hh_data, "w_hh", G, d.H);

  // scratch kept with the context: repeated backward passes allocate no workspace
  if (!ctx.dgates) ctx.dgates = empty({d.T, d.B, G}, dt);
  auto dgates = py::reinterpret_borrow<py::array>(ctx.dgates);
  py::array dx;  // a placeholder (never written) when dx is not wanted
  if (need_dx) dx = empty({d.T, d.B, d.I}, dt);
  py::array dh0 = empty({d.B, d.H}, dt);
  py::array dc0 = empty({d.B, d.H}, dt);
  py::array dw_ih = empty({G, d.I}, dt);
  py::array dw_hh = empty({G, d.H}, dt);
  py::array dbias = empty({G}, dt);

  const lstmcore::LstmGrads<S> grads{
      need_dx ? mut<S>(dx) : nullptr,
      mut<S>(dh0), mut<S>(dc0), mut<S>(dw_ih), mut<S>(dw_hh), mut<S>(dbias)};
  const lstmcore::LstmConstCache<S> cache{
      static_cast<const S*>(ctx.gates.data()), static_cast<const S*>(ctx.h_all.data()),
      static_cast<const S*>(ctx.c_all.data()), static_cast<const S*>(ctx.tanh_c.data())};
  const S* x = static_cast<const S*>(ctx.x.data());
  const S* w_ih = static_cast<const S*>(ctx.w_ih.data());
  const S* w_hh = static_cast<const S*>(ctx.w_hh.data());
  S* dg = mut<S>(dgates);
  const std::int64_t* sizes = ctx.batch_sizes.empty() ? nullptr : ctx.batch_sizes.data();
  {
    py::gil_scoped_release nogil;
    lstmcore::lstm_backward<S>(grads, dg, cache, x, w_ih, w_hh, in.dy, in.dh_n, in.dc_n, d,
                               ctx.reverse, sizes, ctx.precision);
  }
  py::object dx_out = need_dx ? py::object(dx) : py::object(py::none());
  return py::make_tuple(dx_out, dh0, dc0, dw_ih, dw_hh, dbias);
}

py::tuple backward(ForwardContext& ctx, const py::object& dy, const py::object& dh_n,
                   const py::object& dc_n, bool need_dx) {
  if (is_float32(ctx.dtype)) {
    return backward_impl<float>(ctx, dy, dh_n, dc_n, need_dx);
  }
  return backward_impl<double>(ctx, dy, dh_n, dc_n, need_dx);
}

// C = op(A) op(B) through the core's BLAS (single-threaded in the calling thread): the small
// GEMMs of the layers around the LSTM, kept off numpy's BLAS, whose idle threads would spin on
// the cores our own threads need.
template <typename S>
py::array matmul_impl(const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
  const std::int64_t M = trans_a ? a.shape(1) : a.shape(0);
  const std::int64_t K = trans_a ? a.shape(0) : a.shape(1);
  const std::int64_t N = trans_b ? b.shape(0) : b.shape(1);
  const std::int64_t Kb = trans_b ? b.shape(1) : b.shape(0);
  if (K != Kb) {
    throw std::invalid_argument("b: inner dimension " + std::to_string(Kb) +
                                " does not match a's " + std::to_string(K));
  }
  lstmcore::check_matmul(M, N, K);
  py::array c = empty({M, N}, a.dtype());
  const S* ap = static_cast<const S*>(a.data());
  const S* bp = static_cast<const S*>(b.data());
  S* cp = mut<S>(c);
  const std::int64_t lda = a.shape(1), ldb = b.shape(1);
  {
    py::gil_scoped_release nogil;
    lstmcore::matmul<S>(cp, ap, bp, M, N, K, lda, ldb, trans_a, trans_b);
  }
  return c;
}

py::array matmul(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b) {
  if (!py::isinstance<py::array>(a_obj) || py::reinterpret_borrow<py::array>(a_obj).ndim() != 2) {
    fail("a", "a 2-d numpy array", a_obj);
  }
  auto a0 = py::reinterpret_borrow<py::array>(a_obj);
  const py::dtype dt = a0.dtype();
  if (!dt.equal(py::dtype::of<float>()) && !dt.equal(py::dtype::of<double>())) {
    fail("a", "dtype float32 or float64", a_obj);
  }
  if (!py::isinstance<py::array>(b_obj) || py::reinterpret_borrow<py::array>(b_obj).ndim() != 2) {
    fail("b", "a 2-d numpy array", b_obj);
  }
  auto b0 = py::reinterpret_borrow<py::array>(b_obj);
  auto a = require(a_obj, "a", shape_of(a0), dt);
  auto b = require(b_obj, "b", shape_of(b0), dt);
  if (dt.equal(py::dtype::of<float>())) return matmul_impl<float>(a, b, trans_a, trans_b);
  return matmul_impl<double>(a, b, trans_a, trans_b);
}

// The optimizer's arrays: p, m and v are written in place (the one exception to "inputs are
// never written"), so each must be writeable and none may share memory with another.
py::array writeable(const py::handle& obj, const char* name, const Shape& shape,
                    const py::dtype& dt) {
  py::array a = require(obj, name, shape, dt);
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": expected a writeable array");
  return a;
}

bool overlap(const py::array& a, const py::array& b) {
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

template <typename S>
void adam_impl(py::array& p, const py::object& g_obj, const py::object& m_obj,
               const py::object& v_obj, const lstmcore::AdamHyper& h) {
  const Shape shape = shape_of(p);
  const py::dtype dt = p.dtype();
  py::array g = require(g_obj, "g", shape, dt);
  py::array m = writeable(m_obj, "m", shape, dt);
  py::array v = writeable(v_obj, "v", shape, dt);
  // the update reads and writes through restrict pointers: no two of the arrays may overlap
  const py::array* arrays[] = {&p, &g, &m, &v};
  for (int i = 0; i < 4; ++i) {
    for (int j = i + 1; j < 4; ++j) {
      if (overlap(*arrays[i], *arrays[j])) {
        throw std::invalid_argument("adam_update: p, g, m and v must not share memory");
      }
    }
  }
  S* pp = mut<S>(p);
  S* mp = mut<S>(m);
  S* vp = mut<S>(v);
  const S* gp = static_cast<const S*>(g.data());
  const auto n = static_cast<std::int64_t>(p.size());
  py::gil_scoped_release nogil;
  lstmcore::adam_update<S>(pp, gp, mp, vp, n, h);
}

void adam_update(const py::object& p_obj, const py::object& g, const py::object& m,
                 const py::object& v, const lstmcore::AdamHyper& h) {
  if (!py::isinstance<py::array>(p_obj)) fail("p", "a numpy array", p_obj);
  auto p0 = py::reinterpret_borrow<py::array>(p_obj);
  const py::dtype dt = p0.dtype();
  if (!is_float32(dt) && !dt.equal(py::dtype::of<double>())) {
    fail("p", "dtype float32 or float64", p_obj);
  }
  py::array p = writeable(p_obj, "p", shape_of(p0), dt);
  lstmcore::check_adam(h);
  if (is_float32(dt)) {
    adam_impl<float>(p, g, m, v, h);
  } else {
    adam_impl<double>(p, g, m, v, h);
  }
}

double sum_of_squares(const py::object& x_obj) {
  if (!py::isinstance<py::array>(x_obj)) fail("x", "a numpy array", x_obj);
  auto x0 = py::reinterpret_borrow<py::array>(x_obj);
  const py::dtype dt = x0.dtype();
  py::array x = require(x_obj, "x", shape_of(x0), dt);
  const auto n = static_cast<std::int64_t>(x.size());
  if (is_float32(dt)) return lstmcore::sum_of_squares(static_cast<const float*>(x.data()), n);
  if (dt.equal(py::dtype::of<double>())) {
    return lstmcore::sum_of_squares(static_cast<const double*>(x.data()), n);
  }
  fail("x", "dtype float32 or float64", x_obj);
}

// images (N, R, C) float; idx, dy, dx (B,) int64 -> (R, B, C), see lstmcore/batch.h
template <typename S>
py::array shifted_batch_impl(const py::array& images, const py::object& idx_obj,
                             const py::object& dy_obj, const py::object& dx_obj) {
  const std::int64_t N = dim(images, 0), R = dim(images, 1), C = dim(images, 2);
  const py::dtype i64 = py::dtype::of<std::int64_t>();
  if (!py::isinstance<py::array>(idx_obj) || py::reinterpret_borrow<py::array>(idx_obj).ndim() != 1) {
    fail("idx", "a 1-d int64 array (B,)", idx_obj);
  }
  const std::int64_t B = dim(py::reinterpret_borrow<py::array>(idx_obj), 0);
  py::array idx = require(idx_obj, "idx", {B}, i64);
  py::array dy = require(dy_obj, "dy", {B}, i64);
  py::array dx = require(dx_obj, "dx", {B}, i64);
  py::array out = empty({R, B, C}, images.dtype());
  S* o = mut<S>(out);
  const S* im = static_cast<const S*>(images.data());
  const auto* ip = static_cast<const std::int64_t*>(idx.data());
  const auto* yp = static_cast<const std::int64_t*>(dy.data());
  const auto* xp = static_cast<const std::int64_t*>(dx.data());
  {
    py::gil_scoped_release nogil;
    lstmcore::shifted_batch<S>(o, im, N, R, C, ip, yp, xp, B);
  }
  return out;
}

py::array shifted_batch(const py::object& images_obj, const py::object& idx,
                        const py::object& dy, const py::object& dx) {
  if (!py::isinstance<py::array>(images_obj) ||
      py::reinterpret_borrow<py::array>(images_obj).ndim() != 3) {
    fail("images", "a 3-d array (N, rows, cols)", images_obj);
  }
  auto im0 = py::reinterpret_borrow<py::array>(images_obj);
  const py::dtype dt = im0.dtype();
  if (!is_float32(dt) && !dt.equal(py::dtype::of<double>())) {
    fail("images", "dtype float32 or float64", images_obj);
  }
  py::array images = require(images_obj, "images", shape_of(im0), dt);
  if (is_float32(dt)) return shifted_batch_impl<float>(images, idx, dy, dx);
  return shifted_batch_impl<double>(images, idx, dy, dx);
}

// ---- StackInference: a stack and its head in one call, weights packed between calls -------

// The cells' weights (a sequence of L*D (w_ih, w_hh, b_ih, b_hh) tuples), each checked; the
// arrays stay referenced in `keep` while the compute reads them.
template <typename S>
std::vector<lstmcore::CellWeights<S>> stack_cells(const lstmcore::StackShape& sh,
                                                  const py::sequence& cells,
                                                  std::vector<py::array>* keep) {
  const std::int64_t n = sh.layers * sh.directions, G = 4 * sh.H;
  if (static_cast<std::int64_t>(py::len(cells)) != n) {
    throw std::invalid_argument("cells: expected " + std::to_string(n) +
                                " (w_ih, w_hh, b_ih, b_hh) tuples, got " +
                                std::to_string(py::len(cells)));
  }
  const py::dtype dt = py::dtype::of<S>();
  std::vector<lstmcore::CellWeights<S>> out;
  for (std::int64_t k = 0; k < n; ++k) {
    const auto cell = cells[static_cast<std::size_t>(k)].cast<py::sequence>();
    if (py::len(cell) != 4) throw std::invalid_argument("cells: expected 4 arrays per cell");
    const std::int64_t inputs = k < sh.directions ? sh.I : sh.directions * sh.H;
    const std::string at = "cells[" + std::to_string(k) + "].";
    const Shape shapes[4] = {{G, inputs}, {G, sh.H}, {G}, {G}};
    const char* names[4] = {"w_ih", "w_hh", "b_ih", "b_hh"};
    const S* p[4] = {};
    for (int j = 0; j < 4; ++j) {
      const std::string name = at + names[j];
      keep->push_back(require(cell[static_cast<std::size_t>(j)], name.c_str(), shapes[j], dt));
      p[j] = static_cast<const S*>(keep->back().data());
    }
    out.push_back({p[0], p[1], p[2], p[3]});
  }
  return out;
}

template <typename S>
py::array stack_logits(lstmcore::StackInference<S>& net, const py::object& x_obj,
                       const py::sequence& cells_obj, const py::object& head_w_obj,
                       const py::object& head_b_obj) {
  const auto& sh = net.shape();
  const py::dtype dt = py::dtype::of<S>();
  if (!py::isinstance<py::array>(x_obj) || py::reinterpret_borrow<py::array>(x_obj).ndim() != 3) {
    fail("x", "a 3-d array (T, B, I)", x_obj);
  }
  auto x0 = py::reinterpret_borrow<py::array>(x_obj);
  const std::int64_t T = dim(x0, 0), B = dim(x0, 1), DH = sh.directions * sh.H;
  py::array x = require(x_obj, "x", {T, B, sh.I}, dt);
  if (!py::isinstance<py::array>(head_w_obj) ||
      py::reinterpret_borrow<py::array>(head_w_obj).ndim() != 2) {
    fail("head_w", "a 2-d array (C, D*H)", head_w_obj);
  }
  const std::int64_t C = dim(py::reinterpret_borrow<py::array>(head_w_obj), 0);
  py::array head_w = require(head_w_obj, "head_w", {C, DH}, dt);
  py::array head_b = require(head_b_obj, "head_b", {C}, dt);
  std::vector<py::array> keep;
  const auto cells = stack_cells<S>(sh, cells_obj, &keep);
  py::array out = empty({B, C}, dt);
  S* o = mut<S>(out);
  const S* xp = static_cast<const S*>(x.data());
  const S* wp = static_cast<const S*>(head_w.data());
  const S* bp = static_cast<const S*>(head_b.data());
  {
    py::gil_scoped_release nogil;
    net.logits(o, xp, T, B, cells, wp, bp, C);
  }
  return out;
}

template <typename S>
py::array stack_step(lstmcore::StackInference<S>& net, const py::object& x_obj,
                     const py::object& h_obj, const py::object& c_obj,
                     const py::sequence& cells_obj) {
  const auto& sh = net.shape();
  const py::dtype dt = py::dtype::of<S>();
  if (!py::isinstance<py::array>(x_obj) || py::reinterpret_borrow<py::array>(x_obj).ndim() != 2) {
    fail("x", "a 2-d array (B, I)", x_obj);
  }
  const std::int64_t B = dim(py::reinterpret_borrow<py::array>(x_obj), 0);
  py::array x = require(x_obj, "x", {B, sh.I}, dt);
  py::array h = writeable(h_obj, "h", {sh.layers, B, sh.H}, dt);
  py::array c = writeable(c_obj, "c", {sh.layers, B, sh.H}, dt);
  if (overlap(h, c) || overlap(h, x) || overlap(c, x)) {
    throw std::invalid_argument("stream: x, h and c must not share memory");
  }
  std::vector<py::array> keep;
  const auto cells = stack_cells<S>(sh, cells_obj, &keep);
  py::array y = empty({B, sh.H}, dt);
  S* yp = mut<S>(y);
  S* hp = mut<S>(h);
  S* cp = mut<S>(c);
  const S* xp = static_cast<const S*>(x.data());
  {
    py::gil_scoped_release nogil;
    net.step(yp, hp, cp, xp, B, cells);
  }
  return y;
}

template <typename S>
void bind_stack(py::module_& m, const char* name) {
  using Net = lstmcore::StackInference<S>;
  py::class_<Net>(m, name,
                  "A stack and its head for inference, packed weights kept between calls and\n"
                  "packed again when the weights given to a call differ from those packed")
      .def(py::init([](std::int64_t layers, std::int64_t directions, std::int64_t I,
                       std::int64_t H, const std::string& precision) {
             return std::make_unique<Net>(lstmcore::StackShape{layers, directions, I, H},
                                          precision_arg(precision));
           }),
           py::arg("layers"), py::arg("directions"), py::arg("I"), py::arg("H"),
           py::arg("precision") = "native")
      .def("logits", &stack_logits<S>, py::arg("x"), py::arg("cells"), py::arg("head_w"),
           py::arg("head_b"),
           "logits(x (T, B, I), cells, head_w (C, D*H), head_b (C,)) -> (B, C)")
      .def("step", &stack_step<S>, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("cells"),
           "step(x (B, I), h, c (L, B, H) updated in place, cells) -> y (B, H)")
      .def_property_readonly("packs", &Net::packs, "cells packed so far")
      .def_property_readonly("precision",
                             [](const Net& n) { return precision_name(n.precision()); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstmcore's compiled CPU core (use lstmcore.ops, which converts inputs first)";

  py::class_<ForwardContext>(m, "ForwardContext",
                             "What lstm_forward keeps for lstm_backward (opaque).")
      .def_property_readonly("dtype", [](const ForwardContext& c) { return c.dtype; })
      .def_property_readonly("shape",
                             [](const ForwardContext& c) {
                               return py::make_tuple(c.dims.T, c.dims.B, c.dims.I, c.dims.H);
                             },
                             "(T, B, I, H)")
      .def_property_readonly(
          "generation", [](const ForwardContext& c) { return c.generation; },
          "forward passes that have filled this context's buffers (reuse= moves it on)")
      .def_property_readonly(
          "precision", [](const ForwardContext& c) { return precision_name(c.precision); },
          "'native' or 'bf16': the rule of the forward pass (backward runs the same)");

  bind_stack<float>(m, "StackInferenceF32");
  bind_stack<double>(m, "StackInferenceF64");

  m.def("forward", &forward, py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("bias"), py::arg("reuse") = py::none(),
        py::arg("need_y") = true, py::arg("reverse") = false,
        py::arg("batch_sizes") = py::none(), py::arg("need_cache") = true,
        py::arg("precision") = "native",
        "forward(x, h0, c0, w_ih, w_hh, bias, reuse=None, need_y=True, reverse=False,\n"
        "batch_sizes=None, need_cache=True, precision='native') -> (y, h_n, c_n, ctx); h0/c0\n"
        "may be None; reuse: an earlier ctx of the same shapes to overwrite; batch_sizes: (T,)\n"
        "int64 rows active per step (rows sorted by length, longest first); need_cache=False:\n"
        "inference, nothing kept for backward (ctx then refuses backward); precision 'bf16':\n"
        "float32 arrays, GEMM operands rounded to bfloat16 (backward follows the ctx)");
  m.def("backward", &backward, py::arg("ctx"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("need_dx") = true,
        "backward(ctx, dy, dh_n, dc_n, need_dx=True) -> (dx, dh0, dc0, dw_ih, dw_hh, dbias)");
  m.def(
      "check_dims",
      [](std::int64_t T, std::int64_t B, std::int64_t I, std::int64_t H) {
        lstmcore::check_dims(Dims{T, B, I, H});
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
      "ValueError unless every buffer of these sizes fits the core's 32-bit BLAS sizes");
  m.def("check_matmul", &lstmcore::check_matmul, py::arg("M"), py::arg("N"), py::arg("K"),
        "ValueError unless an (M, K) x (K, N) product fits the core's 32-bit BLAS sizes");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, "op(a) @ op(b) through the core's BLAS");
  m.def(
      "adam_update",
      [](const py::object& p, const py::object& g, const py::object& m_, const py::object& v,
         double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
         std::int64_t step) {
        adam_update(p, g, m_, v,
                    lstmcore::AdamHyper{lr, beta1, beta2, eps, weight_decay, decoupled, step});
      },
      py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
      py::arg("step"),
      "one Adam/AdamW step on p, m, v in place (torch's rule; see lstmcore.optim.Adam)");
  m.def("sum_of_squares", &sum_of_squares, py::arg("x"),
        "sum of x**2 accumulated in float64 (x: C-contiguous float32 or float64)");
  m.def("shifted_batch", &shifted_batch, py::arg("images"), py::arg("idx"), py::arg("dy"),
        py::arg("dx"),
        "shifted_batch(images (N, R, C), idx, dy, dx (B,) int64) -> (R, B, C): image idx[b]\n"
        "moved down dy[b] and right dx[b], zeros coming in, time-major");
  m.def("set_num_threads", &lstmcore::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &lstmcore::get_num_threads);
  m.def("blas_core_name", &lstmcore::blas_core_name);
  m.def("blas_call_limit", &lstmcore::blas_call_limit,
        "the most threads let into BLAS at once (its build's MAX_THREADS)");
  m.def("_set_blas_call_limit_for_tests", &lstmcore::set_blas_call_limit_for_tests,
        py::arg("n"), "tests only: a lower limit on threads inside BLAS at once (0: undo)");
  m.def("_blas_peak_calls", &lstmcore::blas_peak_calls,
        "tests only: the most threads that were inside BLAS at once so far");
  m.def("isa", &lstmcore::isa, "the recurrent kernels' ISA path: avx512, avx2 or generic");
  m.def(
      "set_isa", [](const std::string& name) { lstmcore::set_isa(name.c_str()); },
      py::arg("name"), "switch the ISA path (ValueError if unknown or unsupported here)");
  m.def(
      "isa_supported",
      [](const std::string& name) {
        const char* why = nullptr;
        const bool ok = lstmcore::isa_supported(name.c_str(), &why);
        return py::make_tuple(ok, ok ? std::string() : std::string(why));
      },
      py::arg("name"), "(True, '') if this CPU runs the path, else (False, why not)");
  m.def(
      "time_sgemm",
      [](int n, int repeats) {
        py::gil_scoped_release nogil;
        return lstmcore::time_sgemm(n, repeats);
      },
      py::arg("n") = 2048, py::arg("repeats") = 5,
      "seconds for one float32 (n, n) GEMM through the core's BLAS (median)");
}
