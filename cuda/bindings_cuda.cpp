// bindings_cuda.cpp: the Python module lstmcore._cuda (NumPy in, NumPy out).
//
// The same strict boundary as the CPU module: exact dtype, shape, C-contiguous layout, with
// messages naming the argument. ops-level calls share one Context (handle + stream) per
// process, used by one call at a time; the trainer owns its own.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "boundary.h"
#include "check.h"
#include "lstm_cuda.h"
#include "train_cuda.h"

namespace py = pybind11;
using lstmcore::Dims;
namespace lc = lstmcore::cuda;
using namespace lstmcore::boundary;  // NOLINT: Shape, require, describe, ...

namespace {

std::mutex g_shared_mutex;

// Deliberately never destroyed: at interpreter exit the CUDA driver may already be gone, and
// destroying a handle then can crash the process.
lc::Context& shared_context() {
  static lc::Context* ctx = new lc::Context(false);
  return *ctx;
}

struct CacheBase {
  virtual ~CacheBase() = default;
};

template <typename S>
struct DeviceCache : CacheBase {
  lc::DeviceBuffer<S> x, w_ih, w_hh, gates, h_all, c_all, tanh_c;
};

struct CudaForwardContext {
  Dims dims;
  py::dtype dtype;
  std::unique_ptr<CacheBase> cache;
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

template <typename S>
py::tuple forward_impl(const py::object& x, const py::object& h0, const py::object& c0,
                       const py::object& w_ih, const py::object& w_hh, const py::object& bias,
                       const py::dtype& dt) {
  const auto args = forward_args<S>(x, h0, c0, w_ih, w_hh, bias, dt);
  const Dims& d = args.d;
  const std::int64_t G = 4 * d.H;
  const S* h0p = args.h0;
  const S* c0p = args.c0;
  const S* xp = static_cast<const S*>(args.x.data());
  const S* w_ihp = static_cast<const S*>(args.w_ih.data());
  const S* w_hhp = static_cast<const S*>(args.w_hh.data());
  const S* biasp = static_cast<const S*>(args.bias.data());

  auto cache = std::make_unique<DeviceCache<S>>();
  py::array y(dt, Shape{d.T, d.B, d.H});
  py::array h_n(dt, Shape{d.B, d.H});
  py::array c_n(dt, Shape{d.B, d.H});
  S* yp = static_cast<S*>(y.mutable_data());
  S* hnp = static_cast<S*>(h_n.mutable_data());
  S* cnp = static_cast<S*>(c_n.mutable_data());
  {
    // GIL first, then the lock: a thread waiting for the lock never holds the GIL
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(g_shared_mutex);
    lc::Context& ctx = shared_context();
    cudaStream_t s = ctx.stream();
    lc::DeviceBuffer<S> h0_d, c0_d, bias_d;
    cache->x.upload(xp, n<S>(d.T, d.B, d.I), s);
    cache->w_ih.upload(w_ihp, n<S>(G, d.I), s);
    cache->w_hh.upload(w_hhp, n<S>(G, d.H), s);
    bias_d.upload(biasp, n<S>(G), s);
    upload_or_zero<S>(h0_d, h0p, n<S>(d.B, d.H), s);
    upload_or_zero<S>(c0_d, c0p, n<S>(d.B, d.H), s);
    cache->gates.grow(n<S>(d.T, d.B, G));
    cache->h_all.grow(n<S>(d.T + 1, d.B, d.H));
    cache->c_all.grow(n<S>(d.T + 1, d.B, d.H));
    cache->tanh_c.grow(n<S>(d.T, d.B, d.H));
    const lstmcore::LstmCache<S> c{cache->gates.data(), cache->h_all.data(), cache->c_all.data(),
                                   cache->tanh_c.data()};
    lc::lstm_forward<S>(ctx, c, cache->x.data(), h0_d.data(), c0_d.data(), cache->w_ih.data(),
                        cache->w_hh.data(), bias_d.data(), d);
    const std::size_t bh = n<S>(d.B, d.H);
    if (bh > 0) {
      if (d.T > 0) {
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
  auto out = std::make_unique<CudaForwardContext>();
  out->dims = d;
  out->dtype = dt;
  out->cache = std::move(cache);
  return py::make_tuple(y, h_n, c_n, py::cast(std::move(out)));
}

template <typename S>
py::tuple backward_impl(const CudaForwardContext& fc, const py::object& dy,
                        const py::object& dh_n, const py::object& dc_n, bool need_dx) {
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
  py::array dx(dt, Shape{need_dx ? d.T : 0, d.B, d.I});
  S* out[] = {static_cast<S*>(dh0.mutable_data()), static_cast<S*>(dc0.mutable_data()),
              static_cast<S*>(dw_ih.mutable_data()), static_cast<S*>(dw_hh.mutable_data()),
              static_cast<S*>(dbias.mutable_data()), static_cast<S*>(dx.mutable_data())};
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(g_shared_mutex);
    lc::Context& ctx = shared_context();
    cudaStream_t s = ctx.stream();
    lc::DeviceBuffer<S> dy_d, dhn_d, dcn_d, dgates, dh0_d, dc0_d, dw_ih_d, dw_hh_d, db_d, dx_d;
    if (dyp != nullptr) dy_d.upload(dyp, n<S>(d.T, d.B, d.H), s);
    upload_or_zero<S>(dhn_d, dhnp, n<S>(d.B, d.H), s);
    upload_or_zero<S>(dcn_d, dcnp, n<S>(d.B, d.H), s);
    dgates.grow(n<S>(d.T, d.B, G));
    dh0_d.grow(n<S>(d.B, d.H));
    dc0_d.grow(n<S>(d.B, d.H));
    dw_ih_d.grow(n<S>(G, d.I));
    dw_hh_d.grow(n<S>(G, d.H));
    db_d.grow(n<S>(G));
    if (need_dx) dx_d.grow(n<S>(d.T, d.B, d.I));
    const lstmcore::LstmGrads<S> g{need_dx ? dx_d.data() : nullptr, dh0_d.data(), dc0_d.data(),
                                   dw_ih_d.data(), dw_hh_d.data(), db_d.data()};
    const lstmcore::LstmConstCache<S> c{cache.gates.data(), cache.h_all.data(),
                                        cache.c_all.data(), cache.tanh_c.data()};
    lc::lstm_backward<S>(ctx, g, dgates.data(), c, cache.x.data(), cache.w_ih.data(),
                         cache.w_hh.data(), dyp != nullptr ? dy_d.data() : nullptr,
                         dhn_d.data(), dcn_d.data(), d);
    dh0_d.download(out[0], n<S>(d.B, d.H), s);
    dc0_d.download(out[1], n<S>(d.B, d.H), s);
    dw_ih_d.download(out[2], n<S>(G, d.I), s);
    dw_hh_d.download(out[3], n<S>(G, d.H), s);
    db_d.download(out[4], n<S>(G), s);
    if (need_dx) dx_d.download(out[5], n<S>(d.T, d.B, d.I), s);
    ctx.synchronize();
  }
  py::object dx_out = need_dx ? py::object(dx) : py::object(py::none());
  return py::make_tuple(dx_out, dh0, dc0, dw_ih, dw_hh, dbias);
}

}  // namespace

namespace lstmcore::cuda {
void bind_trainer(py::module_& m);  // below
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lstmcore's CUDA path (use lstmcore.ops with device='cuda', or the trainer)";

  py::class_<CudaForwardContext>(m, "ForwardContext")
      .def_property_readonly("shape", [](const CudaForwardContext& c) {
        return py::make_tuple(c.dims.T, c.dims.B, c.dims.I, c.dims.H);
      });

  m.def("device_count", []() {
    const char* why = "";
    const int count = lc::device_count(&why);
    return py::make_tuple(count, std::string(why));
  });
  m.def("device_name", [](int device) {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return std::string(prop.name);
  });
  m.def(
      "forward",
      [](const py::object& x, const py::object& h0, const py::object& c0, const py::object& w_ih,
         const py::object& w_hh, const py::object& bias, const py::object& reuse, bool need_y) {
        (void)reuse;  // device buffers live with each context; nothing to reuse across calls
        const py::dtype dt = float_dtype_of(x);
        py::tuple out = is_float32(dt) ? forward_impl<float>(x, h0, c0, w_ih, w_hh, bias, dt)
                                       : forward_impl<double>(x, h0, c0, w_ih, w_hh, bias, dt);
        if (!need_y) out = py::make_tuple(py::none(), out[1], out[2], out[3]);
        return out;
      },
      py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
      py::arg("bias"), py::arg("reuse") = py::none(), py::arg("need_y") = true);
  m.def(
      "backward",
      [](const CudaForwardContext& c, const py::object& dy, const py::object& dh_n,
         const py::object& dc_n, bool need_dx) {
        if (is_float32(c.dtype)) {
          return backward_impl<float>(c, dy, dh_n, dc_n, need_dx);
        }
        return backward_impl<double>(c, dy, dh_n, dc_n, need_dx);
      },
      py::arg("ctx"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("need_dx") = true);

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
                       const std::string& optimizer, float momentum, float weight_decay,
                       float beta1, float beta2, float eps, float clip, bool tf32) {
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
          [](Trainer& t, float lr) {
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
            auto ok = require_exact<float>(images, "images", {count, im.shape(1), im.shape(2)});
            py::array_t<std::int32_t> out(count);
            const float* src = ok.data();
            std::int32_t* dst = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              t.predict(src, count, dst);
            }
            return out;
          },
          py::arg("images"))
      .def("get_params",
           [](const Trainer& t) {
             py::array_t<float> out(t.param_count());
             t.get_params(out.mutable_data());
             return out;
           })
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
