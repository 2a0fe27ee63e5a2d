// train_cuda.cu: the device-resident classifier trainer (see train_cuda.h).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "check.h"
#include "launch.h"
#include "train_cuda.h"

namespace lstmcore::cuda {
namespace {

constexpr int kReduceThreads = 1024;

// out = a + b, n elements: the core takes torch's two biases as one, summed once per forward
__global__ void add_kernel(float* out, const float* a, const float* b, std::int64_t n) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) out[k] = a[k] + b[k];
}

// x (T, B, I) time-major from the rows `idx` of images (N, T, I)
__global__ void gather_kernel(float* x, const float* images, const std::int32_t* idx,
                              std::int64_t T, std::int64_t B, std::int64_t I) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= T * B * I) return;
  const std::int64_t t = k / (B * I), b = (k / I) % B, i = k % I;
  x[k] = images[(static_cast<std::int64_t>(idx[b]) * T + t) * I + i];
}

// per row: stable log-softmax loss, correctness, and d(mean loss)/d(logits)
__global__ void cross_entropy_kernel(float* dlogits, float* row_loss, float* row_correct,
                                     const float* logits, const std::int32_t* labels,
                                     const std::int32_t* idx, std::int64_t B, std::int64_t C) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const float* z = logits + b * C;
  const std::int32_t label = labels[idx[b]];
  float top = z[0];
  std::int64_t arg = 0;
  for (std::int64_t c = 1; c < C; ++c) {
    if (z[c] > top) {
      top = z[c];
      arg = c;
    }
  }
  float norm = 0.0f;
  for (std::int64_t c = 0; c < C; ++c) norm += expf(z[c] - top);
  const float log_norm = logf(norm);
  row_loss[b] = log_norm - (z[label] - top);
  row_correct[b] = arg == label ? 1.0f : 0.0f;
  for (std::int64_t c = 0; c < C; ++c) {
    const float p = expf(z[c] - top - log_norm);
    dlogits[b * C + c] = (p - (c == label ? 1.0f : 0.0f)) / static_cast<float>(B);
  }
}

// one block: stats = [sum of grad^2, sum of row_loss, sum of row_correct], each summed in a
// fixed order (strided partial sums, then a fixed tree): deterministic, no atomics
__global__ void reduce_stats_kernel(double* stats, const float* grad, std::int64_t P,
                                    const float* row_loss, const float* row_correct,
                                    std::int64_t B) {
  __shared__ double part[3][kReduceThreads];
  double sq = 0.0, loss = 0.0, correct = 0.0;
  for (std::int64_t k = threadIdx.x; k < P; k += blockDim.x) {
    sq += static_cast<double>(grad[k]) * grad[k];
  }
  for (std::int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    loss += row_loss[b];
    correct += row_correct[b];
  }
  part[0][threadIdx.x] = sq;
  part[1][threadIdx.x] = loss;
  part[2][threadIdx.x] = correct;
  __syncthreads();
  for (unsigned width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      for (int q = 0; q < 3; ++q) part[q][threadIdx.x] += part[q][threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int q = 0; q < 3; ++q) stats[q] = part[q][0];
  }
}

struct UpdateArgs {
  float lr, weight_decay, momentum, beta1, beta2, eps, clip;
  float bias_correction1, bias_correction2_sqrt;
  int kind;   // 0 sgd, 1 adam, 2 adamw
  int first;  // SGD: the first step sets the momentum buffer to the gradient
};

// torch's rules (see lstmcore.optim); the caller has already decided that the step is applied
__global__ void update_kernel(float* p, float* m, float* v, const float* grad,
                              const double* stats, std::int64_t P, UpdateArgs a) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= P) return;
  const double norm = sqrt(stats[0]);
  float g = grad[k];
  if (a.clip > 0.0f) {
    const double coef = a.clip / (norm + 1e-6);
    if (coef < 1.0) g *= static_cast<float>(coef);
  }
  if (a.kind == 0) {
    if (a.weight_decay != 0.0f) g += a.weight_decay * p[k];
    if (a.momentum != 0.0f) {
      m[k] = a.first ? g : a.momentum * m[k] + g;  // dampening 0
      g = m[k];
    }
    p[k] -= a.lr * g;
    return;
  }
  if (a.weight_decay != 0.0f) {
    if (a.kind == 2) {
      p[k] *= 1.0f - a.lr * a.weight_decay;
    } else {
      g += a.weight_decay * p[k];
    }
  }
  m[k] = a.beta1 * m[k] + (1.0f - a.beta1) * g;
  v[k] = a.beta2 * v[k] + (1.0f - a.beta2) * g * g;
  const float denom = sqrtf(v[k]) / a.bias_correction2_sqrt + a.eps;
  p[k] -= (a.lr / a.bias_correction1) * (m[k] / denom);
}

// batch-major (n, T, I) to time-major (T, n, I)
__global__ void to_time_major_kernel(float* x, const float* images, std::int64_t T,
                                     std::int64_t n, std::int64_t I) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= T * n * I) return;
  const std::int64_t t = k / (n * I), b = (k / I) % n, i = k % I;
  x[k] = images[(b * T + t) * I + i];
}

__global__ void argmax_kernel(std::int32_t* out, const float* logits, std::int64_t n,
                              std::int64_t C) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= n) return;
  const float* z = logits + b * C;
  std::int32_t arg = 0;
  for (std::int64_t c = 1; c < C; ++c) {
    if (z[c] > z[arg]) arg = static_cast<std::int32_t>(c);
  }
  out[b] = arg;
}

// where `name` starts in the flat buffer laid out as `layout`
std::int64_t offset_of(const std::vector<ParamSlot>& layout, const std::string& name) {
  std::int64_t offset = 0;
  for (const ParamSlot& slot : layout) {
    if (slot.name == name) return offset;
    offset += slot.size;
  }
  throw std::logic_error("param_layout has no " + name);
}

}  // namespace

std::vector<ParamSlot> param_layout(std::int64_t input_size, std::int64_t hidden,
                                    std::int64_t classes) {
  const std::int64_t H = hidden, I = input_size, C = classes;
  return {{"lstm.weight_ih_l0", 4 * H * I},
          {"lstm.weight_hh_l0", 4 * H * H},
          {"lstm.bias_ih_l0", 4 * H},
          {"lstm.bias_hh_l0", 4 * H},
          {"head.weight", C * H},
          {"head.bias", C}};
}

void check_layout(const std::vector<ParamSlot>& given, const std::vector<ParamSlot>& expected) {
  const auto describe = [](const ParamSlot& s) {
    return s.name + " (" + std::to_string(s.size) + " values)";
  };
  const std::size_t n = std::min(given.size(), expected.size());
  for (std::size_t k = 0; k < n; ++k) {
    if (given[k].name != expected[k].name || given[k].size != expected[k].size) {
      throw std::invalid_argument("parameter layout: slot " + std::to_string(k) + " is " +
                                  describe(given[k]) + ", the trainer expects " +
                                  describe(expected[k]));
    }
  }
  if (given.size() != expected.size()) {
    throw std::invalid_argument("parameter layout: " + std::to_string(given.size()) +
                                " parameters, the trainer expects " +
                                std::to_string(expected.size()));
  }
}

struct Trainer::Impl {
  TrainerConfig cfg;
  Context ctx;
  std::int64_t count = 0, P = 0, step = 0;
  std::int64_t last_batch = 0;  // of the last compute(); 0: nothing to apply
  // offsets into the flat parameter buffer (from param_layout)
  std::int64_t o_w_ih = 0, o_w_hh = 0, o_bias_ih = 0, o_bias_hh = 0, o_head_w = 0, o_head_b = 0;
  DeviceBuffer<float> images, params, grads, m, v;
  DeviceBuffer<float> bias;  // (4H,) bias_ih + bias_hh, what the core reads
  DeviceBuffer<std::int32_t> labels, idx, predictions;
  DeviceBuffer<float> x, gates, h_all, c_all, tanh_c, dgates, logits, dlogits, dh_n, dh0, dc0;
  DeviceBuffer<float> row_loss, row_correct;
  DeviceBuffer<double> stats;

  explicit Impl(const TrainerConfig& c) : cfg(c), ctx(c.tf32) {}

  Dims dims(std::int64_t batch) const { return Dims{cfg.steps, batch, cfg.input_size, cfg.hidden}; }

  void size_batch_buffers(std::int64_t batch) {
    const auto T = static_cast<std::size_t>(cfg.steps), B = static_cast<std::size_t>(batch);
    const auto I = static_cast<std::size_t>(cfg.input_size);
    const auto H = static_cast<std::size_t>(cfg.hidden), C = static_cast<std::size_t>(cfg.classes);
    x.grow(T * B * I);
    gates.grow(T * B * 4 * H);
    dgates.grow(T * B * 4 * H);
    h_all.grow((T + 1) * B * H);
    c_all.grow((T + 1) * B * H);
    tanh_c.grow(T * B * H);
    logits.grow(B * C);
    dlogits.grow(B * C);
    dh_n.grow(B * H);
    dh0.grow(B * H);
    dc0.grow(B * H);
    row_loss.grow(B);
    row_correct.grow(B);
    idx.grow(B);
    predictions.grow(B);
  }

  LstmCache<float> cache() {
    return LstmCache<float>{gates.data(), h_all.data(), c_all.data(), tanh_c.data()};
  }

  // logits (batch, C) from x already in place
  void forward(std::int64_t batch) {
    const Dims d = dims(batch);
    const float* p = params.data();
    const std::int64_t C = cfg.classes, H = cfg.hidden;
    add_kernel<<<blocks_for(4 * H), kThreads, 0, ctx.stream()>>>(bias.data(), p + o_bias_ih,
                                                                 p + o_bias_hh, 4 * H);
    CUDA_CHECK_LAUNCH();
    lstm_forward<float>(ctx, cache(), x.data(), nullptr, nullptr, p + o_w_ih, p + o_w_hh,
                        bias.data(), d);
    fill_rows_kernel<float><<<blocks_for(batch * C), kThreads, 0, ctx.stream()>>>(
        logits.data(), p + o_head_b, batch, C);
    CUDA_CHECK_LAUNCH();
    const float* h_n = h_all.data() + cfg.steps * batch * H;
    gemm<float>(ctx, false, true, batch, C, H, 1.0f, h_n, H, p + o_head_w, H, 1.0f, logits.data(),
                C);
  }
};

Trainer::Trainer(const TrainerConfig& cfg, const std::vector<ParamSlot>& layout,
                 const float* images, const std::int32_t* labels, std::int64_t count,
                 const float* params) {
  // checked before the device is touched: a wrong layout costs nothing
  const std::vector<ParamSlot> expected = param_layout(cfg.input_size, cfg.hidden, cfg.classes);
  check_layout(layout, expected);
  if (cfg.optimizer != "adam" && cfg.optimizer != "adamw" && cfg.optimizer != "sgd") {
    throw std::invalid_argument("optimizer: expected adam, adamw or sgd, got " + cfg.optimizer);
  }
  if (cfg.max_batch < 1 || count < 0) throw std::invalid_argument("max_batch must be >= 1");
  impl_ = std::make_unique<Impl>(cfg);
  Impl& s = *impl_;
  check_dims(s.dims(cfg.max_batch));
  const std::int64_t I = cfg.input_size;
  s.o_w_ih = offset_of(expected, "lstm.weight_ih_l0");
  s.o_w_hh = offset_of(expected, "lstm.weight_hh_l0");
  s.o_bias_ih = offset_of(expected, "lstm.bias_ih_l0");
  s.o_bias_hh = offset_of(expected, "lstm.bias_hh_l0");
  s.o_head_w = offset_of(expected, "head.weight");
  s.o_head_b = offset_of(expected, "head.bias");
  s.P = 0;
  for (const ParamSlot& slot : expected) s.P += slot.size;
  s.count = count;
  const auto P = static_cast<std::size_t>(s.P);
  cudaStream_t st = s.ctx.stream();
  s.images.upload(images, static_cast<std::size_t>(count * cfg.steps * I), st);
  s.labels.upload(labels, static_cast<std::size_t>(count), st);
  s.params.upload(params, P, st);
  s.grads.grow(P);
  s.m.grow(P);
  s.v.grow(P);
  CUDA_CHECK(cudaMemsetAsync(s.m.data(), 0, P * sizeof(float), st));
  CUDA_CHECK(cudaMemsetAsync(s.v.data(), 0, P * sizeof(float), st));
  s.stats.grow(3);
  s.bias.grow(static_cast<std::size_t>(4 * cfg.hidden));
  s.size_batch_buffers(cfg.max_batch);
  s.ctx.synchronize();
}

Trainer::~Trainer() = default;

std::int64_t Trainer::param_count() const { return impl_->P; }

StepResult Trainer::compute(const std::int32_t* indices, std::int64_t batch) {
  Impl& s = *impl_;
  if (batch < 1 || batch > s.cfg.max_batch) {
    throw std::invalid_argument("batch must be in [1, max_batch], got " + std::to_string(batch));
  }
  for (std::int64_t b = 0; b < batch; ++b) {
    if (indices[b] < 0 || indices[b] >= s.count) {
      throw std::invalid_argument("index " + std::to_string(indices[b]) + " out of range");
    }
  }
  const std::int64_t T = s.cfg.steps, I = s.cfg.input_size, H = s.cfg.hidden, C = s.cfg.classes;
  cudaStream_t st = s.ctx.stream();
  s.idx.upload(indices, static_cast<std::size_t>(batch), st);
  gather_kernel<<<blocks_for(T * batch * I), kThreads, 0, st>>>(s.x.data(), s.images.data(),
                                                               s.idx.data(), T, batch, I);
  CUDA_CHECK_LAUNCH();
  s.forward(batch);
  cross_entropy_kernel<<<blocks_for(batch), kThreads, 0, st>>>(
      s.dlogits.data(), s.row_loss.data(), s.row_correct.data(), s.logits.data(),
      s.labels.data(), s.idx.data(), batch, C);
  CUDA_CHECK_LAUNCH();

  float* g = s.grads.data();
  const float* p = s.params.data();
  const float* h_n = s.h_all.data() + T * batch * H;
  gemm<float>(s.ctx, true, false, C, H, batch, 1.0f, s.dlogits.data(), C, h_n, H, 0.0f,
              g + s.o_head_w, H);
  column_sum<float>(s.ctx, g + s.o_head_b, s.dlogits.data(), batch, C);
  gemm<float>(s.ctx, false, false, batch, H, C, 1.0f, s.dlogits.data(), C, p + s.o_head_w, H,
              0.0f, s.dh_n.data(), H);
  const LstmGrads<float> lg{nullptr, s.dh0.data(), s.dc0.data(), g + s.o_w_ih, g + s.o_w_hh,
                            g + s.o_bias_ih};
  const LstmConstCache<float> cc{s.gates.data(), s.h_all.data(), s.c_all.data(),
                                 s.tanh_c.data()};
  lstm_backward<float>(s.ctx, lg, s.dgates.data(), cc, s.x.data(), p + s.o_w_ih, p + s.o_w_hh,
                       nullptr, s.dh_n.data(), nullptr, s.dims(batch));
  // the two biases enter as a sum: bias_hh's gradient is bias_ih's (as in torch)
  CUDA_CHECK(cudaMemcpyAsync(g + s.o_bias_hh, g + s.o_bias_ih,
                             static_cast<std::size_t>(4 * H) * sizeof(float),
                             cudaMemcpyDeviceToDevice, st));

  reduce_stats_kernel<<<1, kReduceThreads, 0, st>>>(s.stats.data(), g, s.P, s.row_loss.data(),
                                                     s.row_correct.data(), batch);
  CUDA_CHECK_LAUNCH();
  double stats[3] = {0.0, 0.0, 0.0};
  s.stats.download(stats, 3, st);
  s.ctx.synchronize();
  s.last_batch = batch;
  StepResult r;
  r.grad_norm = std::sqrt(stats[0]);
  r.loss = stats[1] / static_cast<double>(batch);
  r.correct = static_cast<std::int64_t>(stats[2]);
  return r;
}

void Trainer::apply(float lr) {
  Impl& s = *impl_;
  if (s.last_batch == 0) throw std::logic_error("Trainer.apply: no compute() to apply");
  s.last_batch = 0;  // one update per computed gradient
  cudaStream_t st = s.ctx.stream();
  const TrainerConfig& c = s.cfg;
  const std::int64_t t = s.step + 1;
  UpdateArgs a{};
  a.lr = lr;
  a.weight_decay = c.weight_decay;
  a.momentum = c.momentum;
  a.beta1 = c.beta1;
  a.beta2 = c.beta2;
  a.eps = c.eps;
  a.clip = c.clip;
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(static_cast<double>(c.beta1), t));
  a.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(c.beta2), t)));
  a.kind = c.optimizer == "sgd" ? 0 : (c.optimizer == "adamw" ? 2 : 1);
  a.first = s.step == 0 ? 1 : 0;
  update_kernel<<<blocks_for(s.P), kThreads, 0, st>>>(s.params.data(), s.m.data(), s.v.data(),
                                                       s.grads.data(), s.stats.data(), s.P, a);
  CUDA_CHECK_LAUNCH();
  s.step = t;  // stream order: the next compute() sees the updated parameters
}

void Trainer::predict(const float* images, std::int64_t count, std::int32_t* out) {
  Impl& s = *impl_;
  const std::int64_t T = s.cfg.steps, I = s.cfg.input_size, chunk = s.cfg.max_batch;
  cudaStream_t st = s.ctx.stream();
  DeviceBuffer<float> staging(static_cast<std::size_t>(chunk * T * I));
  for (std::int64_t start = 0; start < count; start += chunk) {
    const std::int64_t n = std::min(chunk, count - start);
    staging.upload(images + start * T * I, static_cast<std::size_t>(n * T * I), st);
    to_time_major_kernel<<<blocks_for(T * n * I), kThreads, 0, st>>>(s.x.data(), staging.data(),
                                                                    T, n, I);
    CUDA_CHECK_LAUNCH();
    s.forward(n);
    argmax_kernel<<<blocks_for(n), kThreads, 0, st>>>(s.predictions.data(), s.logits.data(), n,
                                                      s.cfg.classes);
    CUDA_CHECK_LAUNCH();
    s.predictions.download(out + start, static_cast<std::size_t>(n), st);
    s.ctx.synchronize();  // staging and predictions are reused by the next chunk
  }
}

void Trainer::get_params(float* host) const {
  impl_->params.download(host, static_cast<std::size_t>(impl_->P), impl_->ctx.stream());
  impl_->ctx.synchronize();
}

void Trainer::set_params(const float* host) {
  impl_->params.upload(host, static_cast<std::size_t>(impl_->P), impl_->ctx.stream());
  impl_->ctx.synchronize();
}

void Trainer::get_state(float* m, float* v, std::int64_t* step) const {
  const auto P = static_cast<std::size_t>(impl_->P);
  impl_->m.download(m, P, impl_->ctx.stream());
  impl_->v.download(v, P, impl_->ctx.stream());
  impl_->ctx.synchronize();
  *step = impl_->step;
}

void Trainer::set_state(const float* m, const float* v, std::int64_t step) {
  const auto P = static_cast<std::size_t>(impl_->P);
  impl_->m.upload(m, P, impl_->ctx.stream());
  impl_->v.upload(v, P, impl_->ctx.stream());
  impl_->ctx.synchronize();
  impl_->step = step;
}

}  // namespace lstmcore::cuda
