// cuda.cpp: the Python module lstmcore._cuda (NumPy in, NumPy out).
//
// The same strict boundary as the CPU module: exact dtype, shape, C-contiguous layout, with
// messages naming the argument. ops-level calls share one Context (handle + stream) per
// process, used by one call at a time; the trainer owns its own.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "boundary.h"
#include "check.h"
#include "launch.h"
#include "lstm_cuda.h"
#include "optim_cuda.h"
#include "train_cuda.h"

namespace py = pybind11;
using lstmcore::Dims;
namespace lc = lstmcore::cuda;
using namespace lstmcore::boundary;  // NOLINT: Shape, require, describe, ...

namespace {

std::mutex g_shared_mutex;

// Deliberately never destroyed: at interpreter exit the CUDA driver may already be gone, and
// destroying a handle then can crash the process. Created on first use, under g_shared_mutex.
lc::Context& shared_context() {
  static lc::Context* ctx = new lc::Context(false);
  return *ctx;
}

struct CacheBase {
  virtual ~CacheBase() = default;
};

// A context's device buffers: forward's inputs and cache, and backward's inputs, workspace
// and outputs (grown on first use). A context reused through reuse= (nn.LSTM passes each
// layer's previous context) overwrites them: a model keeps one set, nothing is allocated per
// call once the shapes have been seen.
template <typename S>
struct DeviceCache : CacheBase {
  lc::DeviceBuffer<S> x, w_ih, w_hh, bias, h0, c0;          // forward's inputs
  lc::DeviceBuffer<S> gates, h_all, c_all, tanh_c;          // forward's cache
  lc::DeviceBuffer<S> dy, dh_n, dc_n, dgates;               // backward's inputs, workspace
  lc::DeviceBuffer<S> dx, dh0, dc0, dw_ih, dw_hh, dbias;    // backward's outputs
};

struct CudaForwardContext {
  Dims dims;
  py::dtype dtype;
  std::unique_ptr<CacheBase> cache;
  // forward passes that have filled these buffers: an ops.LstmContext made by an earlier
  // pass (before a reuse=) is stale once this moves on
  std::uint64_t generation = 0;
  // set while a call computes on the buffers with the GIL released: a second call on the
  // same context from another thread would overwrite what the first one reads
  std::atomic<bool> busy{false};
};

template <typename S>
std::size_t n(std::int64_t a, std::int64_t b = 1, std::int64_t c = 1) {
  return static_cast<std::size_t>(a * b * c);
}

// uploads `host`, or zeros when it is null
template <typename S>
void upload_or_zero(lc::DeviceBuffer<S>& buf, const S* host, std::size_t count,
                    cudaStream_t stream) {
  buf.grow(count);
  if (host != nullptr) {
    buf.upload(host, count, stream);
  } else if (count > 0) {
    CUDA_CHECK(cudaMemsetAsync(buf.data(), 0, count * sizeof(S), stream));
  }
}

bool same_shape(const CudaForwardContext& c, const Dims& d, const py::dtype& dt) {
  return c.dims.T == d.T && c.dims.B == d.B && c.dims.I == d.I && c.dims.H == d.H &&
         c.dtype.equal(dt);
}

// The context to fill: `reuse` (an earlier context of the same shapes and dtype, whose device
// buffers are overwritten) or a new one, as on the CPU.
template <typename S>
py::object context_for(const py::object& reuse, const Dims& d, const py::dtype& dt) {
  if (!reuse.is_none()) {
    if (!py::isinstance<CudaForwardContext>(reuse)) {
      fail("reuse", "a CUDA ForwardContext or None", reuse);
    }
    if (same_shape(reuse.cast<const CudaForwardContext&>(), d, dt)) return reuse;
  }
  auto fresh = std::make_unique<CudaForwardContext>();
  fresh->dims = d;
  fresh->dtype = dt;
  fresh->cache = std::make_unique<DeviceCache<S>>();
  return py::cast(std::move(fresh));
}

template <typename S>
py::tuple forward_impl(const py::object& x, const py::object& h0, const py::object& c0,
                       const py::object& w_ih, const py::object& w_hh, const py::object& bias,
                       const py::dtype& dt, const py::object& reuse, bool need_y) {
  // every argument is checked before a reused context is touched
  const auto args = forward_args<S>(x, h0, c0, w_ih, w_hh, bias, dt);
  const Dims& d = args.d;
  const std::int64_t G = 4 * d.H;
  const S* h0p = args.h0;
  const S* c0p = args.c0;
  const S* xp = static_cast<const S*>(args.x.data());
  const S* w_ihp = static_cast<const S*>(args.w_ih.data());
  const S* w_hhp = static_cast<const S*>(args.w_hh.data());
  const S* biasp = static_cast<const S*>(args.bias.data());

  py::object ctx_obj = context_for<S>(reuse, d, dt);
  auto& fc = ctx_obj.cast<CudaForwardContext&>();
  const InUse in_use(fc.busy);  // before anything of a reused context is touched
  ++fc.generation;
  auto& cache = static_cast<DeviceCache<S>&>(*fc.cache);
  py::array y;  // a placeholder (never written) when y is not wanted
  if (need_y) y = py::array(dt, Shape{d.T, d.B, d.H});
  py::array h_n(dt, Shape{d.B, d.H});
  py::array c_n(dt, Shape{d.B, d.H});
  S* yp = need_y ? static_cast<S*>(y.mutable_data()) : nullptr;
  S* hnp = static_cast<S*>(h_n.mutable_data());
  S* cnp = static_cast<S*>(c_n.mutable_data());
  {
    // GIL first, then the lock: a thread waiting for the lock never holds the GIL
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(g_shared_mutex);
    lc::Context& ctx = shared_context();
    cudaStream_t s = ctx.stream();
    cache.x.upload(xp, n<S>(d.T, d.B, d.I), s);
    cache.w_ih.upload(w_ihp, n<S>(G, d.I), s);
    cache.w_hh.upload(w_hhp, n<S>(G, d.H), s);
    cache.bias.upload(biasp, n<S>(G), s);
    upload_or_zero<S>(cache.h0, h0p, n<S>(d.B, d.H), s);
    upload_or_zero<S>(cache.c0, c0p, n<S>(d.B, d.H), s);
    cache.gates.grow(n<S>(d.T, d.B, G));
    cache.h_all.grow(n<S>(d.T + 1, d.B, d.H));
    cache.c_all.grow(n<S>(d.T + 1, d.B, d.H));
    cache.tanh_c.grow(n<S>(d.T, d.B, d.H));
    const lstmcore::LstmCache<S> c{cache.gates.data(), cache.h_all.data(), cache.c_all.data(),
                                   cache.tanh_c.data()};
    lc::lstm_forward<S>(ctx, c, cache.x.data(), cache.h0.data(), cache.c0.data(),
                        cache.w_ih.data(), cache.w_hh.data(), cache.bias.data(), d);
    const std::size_t bh = n<S>(d.B, d.H);
    if (bh > 0) {
      if (yp != nullptr && d.T > 0) {
        CUDA_CHECK(cudaMemcpyAsync(yp, c.h_all + bh, bh * n<S>(d.T) * sizeof(S),
                                   cudaMemcpyDeviceToHost, s));
      }
      CUDA_CHECK(cudaMemcpyAsync(hnp, c.h_all + bh * n<S>(d.T), bh * sizeof(S),
                                 cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaMemcpyAsync(cnp, c.c_all + bh * n<S>(d.T), bh * sizeof(S),
                                 cudaMemcpyDeviceToHost, s));
    }
    ctx.synchronize();
  }
  py::object y_out = need_y ? py::object(y) : py::object(py::none());
  return py::make_tuple(y_out, h_n, c_n, ctx_obj);
}

template <typename S>
py::tuple backward_impl(CudaForwardContext& fc, const py::object& dy, const py::object& dh_n,
                        const py::object& dc_n, bool need_dx) {
  const InUse in_use(fc.busy);  // a forward(reuse=) cannot refill the buffers while we read them
  const Dims& d = fc.dims;
  const py::dtype& dt = fc.dtype;
  const std::int64_t G = 4 * d.H;
  auto& cache = static_cast<DeviceCache<S>&>(*fc.cache);
  const auto in = grad_args<S>(dy, dh_n, dc_n, d, dt);
  const S* dyp = in.dy;
  const S* dhnp = in.dh_n;
  const S* dcnp = in.dc_n;
  py::array dh0(dt, Shape{d.B, d.H}), dc0(dt, Shape{d.B, d.H});
  py::array dw_ih(dt, Shape{G, d.I}), dw_hh(dt, Shape{G, d.H}), dbias(dt, Shape{G});
  py::array dx;  // a placeholder (never written) when dx is not wanted
  if (need_dx) dx = py::array(dt, Shape{d.T, d.B, d.I});
  S* dh0p = static_cast<S*>(dh0.mutable_data());
  S* dc0p = static_cast<S*>(dc0.mutable_data());
  S* dw_ihp = static_cast<S*>(dw_ih.mutable_data());
  S* dw_hhp = static_cast<S*>(dw_hh.mutable_data());
  S* dbiasp = static_cast<S*>(dbias.mutable_data());
  S* dxp = need_dx ? static_cast<S*>(dx.mutable_data()) : nullptr;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(g_shared_mutex);
    lc::Context& ctx = shared_context();
    cudaStream_t s = ctx.stream();
    if (dyp != nullptr) cache.dy.upload(dyp, n<S>(d.T, d.B, d.H), s);
    upload_or_zero<S>(cache.dh_n, dhnp, n<S>(d.B, d.H), s);
    upload_or_zero<S>(cache.dc_n, dcnp, n<S>(d.B, d.H), s);
    cache.dgates.grow(n<S>(d.T, d.B, G));
    cache.dh0.grow(n<S>(d.B, d.H));
    cache.dc0.grow(n<S>(d.B, d.H));
    cache.dw_ih.grow(n<S>(G, d.I));
    cache.dw_hh.grow(n<S>(G, d.H));
    cache.dbias.grow(n<S>(G));
    if (need_dx) cache.dx.grow(n<S>(d.T, d.B, d.I));
    const lstmcore::LstmGrads<S> g{need_dx ? cache.dx.data() : nullptr, cache.dh0.data(),
                                   cache.dc0.data(), cache.dw_ih.data(), cache.dw_hh.data(),
                                   cache.dbias.data()};
    const lstmcore::LstmConstCache<S> c{cache.gates.data(), cache.h_all.data(),
                                        cache.c_all.data(), cache.tanh_c.data()};
    lc::lstm_backward<S>(ctx, g, cache.dgates.data(), c, cache.x.data(), cache.w_ih.data(),
                         cache.w_hh.data(), dyp != nullptr ? cache.dy.data() : nullptr,
                         cache.dh_n.data(), cache.dc_n.data(), d);
    cache.dh0.download(dh0p, n<S>(d.B, d.H), s);
    cache.dc0.download(dc0p, n<S>(d.B, d.H), s);
    cache.dw_ih.download(dw_ihp, n<S>(G, d.I), s);
    cache.dw_hh.download(dw_hhp, n<S>(G, d.H), s);
    cache.dbias.download(dbiasp, n<S>(G), s);
    if (need_dx) cache.dx.download(dxp, n<S>(d.T, d.B, d.I), s);
    ctx.synchronize();
  }
  py::object dx_out = need_dx ? py::object(dx) : py::object(py::none());
  return py::make_tuple(dx_out, dh0, dc0, dw_ih, dw_hh, dbias);
}

// The device's optimizer rule run on the host over arrays, for tests without a GPU:
// update_element (cuda/optim_cuda.h, on lstmcore/optim_rule.h) is the kernel's own code.
void host_update(const py::object& p_obj, const py::object& g_obj, const py::object& m_obj,
                 const py::object& v_obj, const std::string& optimizer, double lr,
                 double momentum, double weight_decay, double beta1, double beta2, double eps,
                 double clip, double grad_norm, std::int64_t step, bool first) {
  if (!py::isinstance<py::array>(p_obj)) fail("p", "a numpy array", p_obj);
  const std::int64_t count = py::reinterpret_borrow<py::array>(p_obj).size();
  const py::dtype f32 = py::dtype::of<float>();
  py::array p = require(p_obj, "p", {count}, f32);
  py::array g = require(g_obj, "g", {count}, f32);
  py::array m = require(m_obj, "m", {count}, f32);
  py::array v = require(v_obj, "v", {count}, f32);
  if (!p.writeable() || !m.writeable() || !v.writeable()) {
    throw std::invalid_argument("p, m and v must be writeable");
  }
  if (optimizer != "adam" && optimizer != "adamw" && optimizer != "sgd") {
    throw std::invalid_argument("optimizer: expected adam, adamw or sgd, got " + optimizer);
  }
  const lc::UpdateRule rule = lc::make_update_rule(optimizer, lr, momentum, weight_decay, beta1,
                                                   beta2, eps, clip, step, first);
  auto* pp = static_cast<float*>(p.mutable_data());
  const auto* gp = static_cast<const float*>(g.data());
  auto* mp = static_cast<float*>(m.mutable_data());
  auto* vp = static_cast<float*>(v.mutable_data());
  for (std::int64_t k = 0; k < count; ++k) {
    lc::update_element(pp[k], mp[k], vp[k], gp[k], grad_norm, rule);
  }
}

}  // namespace

namespace lstmcore::cuda {
void bind_trainer(py::module_& m);  // below
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lstmcore's CUDA path (use lstmcore.ops with device='cuda', or the trainer)";

  py::class_<CudaForwardContext>(m, "ForwardContext")
      .def_property_readonly("shape",
                             [](const CudaForwardContext& c) {
                               return py::make_tuple(c.dims.T, c.dims.B, c.dims.I, c.dims.H);
                             })
      .def_property_readonly(
          "generation", [](const CudaForwardContext& c) { return c.generation; },
          "forward passes that have filled this context's buffers (reuse= moves it on)");

  m.def(
      "device_count",
      []() {
        std::string why;
        const int count = lc::device_count(&why);
        return py::make_tuple(count, why);
      },
      "(number of usable CUDA devices, the reason when there is none)");
  m.def("device_name", [](int device) {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return std::string(prop.name);
  });
  m.def(
      "forward",
      [](const py::object& x, const py::object& h0, const py::object& c0, const py::object& w_ih,
         const py::object& w_hh, const py::object& bias, const py::object& reuse, bool need_y) {
        const py::dtype dt = float_dtype_of(x);
        return is_float32(dt) ? forward_impl<float>(x, h0, c0, w_ih, w_hh, bias, dt, reuse, need_y)
                              : forward_impl<double>(x, h0, c0, w_ih, w_hh, bias, dt, reuse,
                                                     need_y);
      },
      py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
      py::arg("bias"), py::arg("reuse") = py::none(), py::arg("need_y") = true,
      "(y or None, h_n, c_n, ctx); reuse: an earlier ctx of the same shapes whose device "
      "buffers are overwritten (nothing allocated); need_y=False skips y's copy");
  m.def(
      "backward",
      [](CudaForwardContext& c, const py::object& dy, const py::object& dh_n,
         const py::object& dc_n, bool need_dx) {
        if (is_float32(c.dtype)) {
          return backward_impl<float>(c, dy, dh_n, dc_n, need_dx);
        }
        return backward_impl<double>(c, dy, dh_n, dc_n, need_dx);
      },
      py::arg("ctx"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("need_dx") = true);

  // host-only: what the tests check without a GPU
  m.def(
      "unusable_reason",
      [](int status, int driver_version, int runtime_version) {
        return lc::unusable_reason(static_cast<cudaError_t>(status), driver_version,
                                   runtime_version);
      },
      py::arg("status"), py::arg("driver_version"), py::arg("runtime_version") = CUDART_VERSION,
      "the reason device_count gives for a cudaGetDeviceCount status and a driver version");
  m.def(
      "describe_cuda_error",
      [](int status) { return lc::describe_cuda_error(static_cast<cudaError_t>(status)); },
      py::arg("status"), "the text a failing CUDA runtime call reports");
  m.def(
      "describe_cublas_status",
      [](int status) { return lc::describe_cublas_status(static_cast<cublasStatus_t>(status)); },
      py::arg("status"), "the text a failing cuBLAS call reports (cublasGetStatusName/String)");
  m.def(
      "check_cublas",
      [](int status) {
        CUBLAS_CHECK(static_cast<cublasStatus_t>(status));
      },
      py::arg("status"), "raises the RuntimeError a failing cuBLAS call raises");
  m.attr("runtime_version") = CUDART_VERSION;
  m.def(
      "column_sum_plan",
      [](std::int64_t rows) {
        const lc::SumPlan p = lc::column_sum_plan(rows);
        return py::make_tuple(p.chunk_rows, p.chunks);
      },
      py::arg("rows"), "(chunk_rows, chunks) of the two-level column sum over `rows` rows");
  m.def(
      "reduce_plan",
      [](std::int64_t count) {
        const lc::ReducePlan p = lc::reduce_plan(count);
        return py::make_tuple(p.chunk, p.blocks);
      },
      py::arg("count"), "(chunk, blocks) of the gradient norm's level one over `count` values");
  m.def("host_update", &host_update, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"),
        py::arg("optimizer"), py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("clip"),
        py::arg("grad_norm"), py::arg("step"), py::arg("first"),
        "the GPU trainer's update of p, m, v (float32, 1-d, in place) run on the host: the "
        "kernel's own element code (optim_cuda.h)");

  lstmcore::cuda::bind_trainer(m);
}

namespace lstmcore::cuda {

namespace {

template <typename T>
py::array_t<T> require_exact(const py::object& obj, const char* name, const Shape& shape) {
  return py::reinterpret_borrow<py::array_t<T>>(require(obj, name, shape, py::dtype::of<T>()));
}

std::vector<ParamSlot> to_layout(const std::vector<std::pair<std::string, std::int64_t>>& slots) {
  std::vector<ParamSlot> out;
  out.reserve(slots.size());
  for (const auto& [name, size] : slots) out.push_back(ParamSlot{name, size});
  return out;
}

py::list from_layout(const std::vector<ParamSlot>& layout) {
  py::list out;
  for (const ParamSlot& slot : layout) out.append(py::make_tuple(slot.name, slot.size));
  return out;
}

}  // namespace

void bind_trainer(py::module_& m) {
  // host-only: usable (and tested) without a GPU
  m.def(
      "param_layout",
      [](std::int64_t input_size, std::int64_t hidden, std::int64_t classes) {
        return from_layout(param_layout(input_size, hidden, classes));
      },
      py::arg("input_size"), py::arg("hidden"), py::arg("classes"),
      "the trainer's flat parameter layout: [(name, size), ...] in order");
  m.def(
      "check_layout",
      [](const std::vector<std::pair<std::string, std::int64_t>>& layout,
         std::int64_t input_size, std::int64_t hidden, std::int64_t classes) {
        check_layout(to_layout(layout), param_layout(input_size, hidden, classes));
      },
      py::arg("layout"), py::arg("input_size"), py::arg("hidden"), py::arg("classes"),
      "ValueError naming the first slot where layout differs from the trainer's");
  py::class_<Trainer>(m, "Trainer", "Device-resident training of the sequence classifier.")
      .def(py::init([](const py::object& images, const py::object& labels,
                       const py::object& params,
                       const std::vector<std::pair<std::string, std::int64_t>>& layout,
                       std::int64_t hidden, std::int64_t classes, std::int64_t max_batch,
                       const std::string& optimizer, double momentum, double weight_decay,
                       double beta1, double beta2, double eps, double clip, bool tf32) {
             if (!py::isinstance<py::array>(images) ||
                 py::reinterpret_borrow<py::array>(images).ndim() != 3) {
               throw std::invalid_argument("images: expected (N, T, I) float32, got " +
                                           describe(images));
             }
             auto im = py::reinterpret_borrow<py::array>(images);
             TrainerConfig cfg;
             const std::int64_t count = im.shape(0);
             cfg.steps = im.shape(1);
             cfg.input_size = im.shape(2);
             cfg.hidden = hidden;
             cfg.classes = classes;
             cfg.max_batch = max_batch;
             cfg.optimizer = optimizer;
             cfg.momentum = momentum;
             cfg.weight_decay = weight_decay;
             cfg.beta1 = beta1;
             cfg.beta2 = beta2;
             cfg.eps = eps;
             cfg.clip = clip;
             cfg.tf32 = tf32;
             std::int64_t P = 0;
             for (const ParamSlot& slot : param_layout(cfg.input_size, hidden, classes)) {
               P += slot.size;
             }
             auto im_ok = require_exact<float>(images, "images",
                                               {count, cfg.steps, cfg.input_size});
             auto lab_ok = require_exact<std::int32_t>(labels, "labels", {count});
             auto par_ok = require_exact<float>(params, "params", {P});
             const std::int32_t* lab = lab_ok.data();
             for (std::int64_t k = 0; k < count; ++k) {
               if (lab[k] < 0 || lab[k] >= classes) {
                 throw std::invalid_argument("labels: value " + std::to_string(lab[k]) +
                                             " outside [0, classes)");
               }
             }
             const std::vector<ParamSlot> slots = to_layout(layout);
             py::gil_scoped_release nogil;
             return std::make_unique<Trainer>(cfg, slots, im_ok.data(), lab, count,
                                              par_ok.data());
           }),
           py::arg("images"), py::arg("labels"), py::arg("params"), py::arg("layout"),
           py::arg("hidden"),
           py::arg("classes"), py::arg("max_batch"), py::arg("optimizer"), py::arg("momentum"),
           py::arg("weight_decay"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("clip"), py::arg("tf32") = false)
      .def_property_readonly("param_count", &Trainer::param_count)
      .def(
          "compute",
          [](Trainer& t, const py::object& indices) {
            if (!py::isinstance<py::array>(indices) ||
                py::reinterpret_borrow<py::array>(indices).ndim() != 1) {
              throw std::invalid_argument("indices: expected (B,) int32, got " +
                                          describe(indices));
            }
            const std::int64_t batch = py::reinterpret_borrow<py::array>(indices).shape(0);
            auto idx = require_exact<std::int32_t>(indices, "indices", {batch});
            const std::int32_t* p = idx.data();
            StepResult r;
            {
              py::gil_scoped_release nogil;
              r = t.compute(p, batch);
            }
            return py::make_tuple(r.loss, r.correct, r.grad_norm);
          },
          py::arg("indices"),
          "gradients of the batch; returns (mean loss, correct, grad norm); changes nothing")
      .def(
          "apply",
          [](Trainer& t, double lr) {
            py::gil_scoped_release nogil;
            t.apply(lr);
          },
          py::arg("lr"), "the optimizer update from the last compute()'s gradients")
      .def(
          "predict",
          [](Trainer& t, const py::object& images) {
            if (!py::isinstance<py::array>(images) ||
                py::reinterpret_borrow<py::array>(images).ndim() != 3) {
              throw std::invalid_argument("images: expected (N, T, I) float32, got " +
                                          describe(images));
            }
            auto im = py::reinterpret_borrow<py::array>(images);
            const std::int64_t count = im.shape(0);
            // the training shape, checked here with the boundary's message and again in
            // Trainer::predict (which never reads past what it was told)
            auto ok = require_exact<float>(images, "images", {count, t.steps(), t.input_size()});
            py::array_t<std::int32_t> out(count);
            const float* src = ok.data();
            std::int32_t* dst = out.mutable_data();
            const std::int64_t steps = im.shape(1), inputs = im.shape(2);
            {
              py::gil_scoped_release nogil;
              t.predict(src, count, steps, inputs, dst);
            }
            return out;
          },
          py::arg("images"), "argmax of the logits of images (N, T, I) float32, as trained")
      .def("get_params",
           [](const Trainer& t) {
             py::array_t<float> out(t.param_count());
             t.get_params(out.mutable_data());
             return out;
           })
      .def("get_grads",
           [](const Trainer& t) {
             py::array_t<float> out(t.param_count());
             t.get_grads(out.mutable_data());
             return out;
           }, "the last compute()'s gradients (before clipping), laid out as the parameters")
      .def("set_params",
           [](Trainer& t, const py::object& params) {
             auto ok = require_exact<float>(params, "params", {t.param_count()});
             t.set_params(ok.data());
           })
      .def("get_state",
           [](const Trainer& t) {
             py::array_t<float> mm(t.param_count()), vv(t.param_count());
             std::int64_t step = 0;
             t.get_state(mm.mutable_data(), vv.mutable_data(), &step);
             return py::make_tuple(mm, vv, step);
           })
      .def("set_state", [](Trainer& t, const py::object& mm, const py::object& vv,
                           std::int64_t step) {
        auto m_ok = require_exact<float>(mm, "m", {t.param_count()});
        auto v_ok = require_exact<float>(vv, "v", {t.param_count()});
        t.set_state(m_ok.data(), v_ok.data(), step);
      });
}

}  // namespace lstmcore::cuda
