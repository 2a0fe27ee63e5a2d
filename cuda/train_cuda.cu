// train_cuda.cu: the device-resident classifier trainer (see train_cuda.h).
#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

#include "check.h"
#include "launch.h"
#include "optim_cuda.h"
#include "train_cuda.h"

namespace lstmcore::cuda {
namespace {

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

// a fixed tree over part[0 .. kReduceThreads) of one block; the sum lands in part[0]
__device__ void tree_sum(double* part) {
  __syncthreads();
  for (int width = kReduceThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) part[threadIdx.x] += part[threadIdx.x + width];
    __syncthreads();
  }
}

// level one of reduce_plan (launch.h): partial[block] = the sum of grad^2 over the block's
// chunk, in float64
__global__ void __launch_bounds__(kReduceThreads)
    square_sum_kernel(double* partial, const float* grad, std::int64_t P, std::int64_t chunk) {
  __shared__ double part[kReduceThreads];
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * chunk;
  const std::int64_t end = first + chunk < P ? first + chunk : P;
  double sq = 0.0;
  for (std::int64_t k = first + threadIdx.x; k < end; k += kReduceThreads) {
    const double g = grad[k];
    sq += g * g;
  }
  part[threadIdx.x] = sq;
  tree_sum(part);
  if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// level two, one block: stats = [sum of the partials (grad^2), sum of row_loss, sum of
// row_correct], each in a fixed order (strided, then a fixed tree): deterministic
__global__ void __launch_bounds__(kReduceThreads)
    reduce_stats_kernel(double* stats, const double* partial, std::int64_t blocks,
                        const float* row_loss, const float* row_correct, std::int64_t B) {
  __shared__ double part[kReduceThreads];
  double sums[3] = {0.0, 0.0, 0.0};
  for (std::int64_t k = threadIdx.x; k < blocks; k += kReduceThreads) sums[0] += partial[k];
  for (std::int64_t b = threadIdx.x; b < B; b += kReduceThreads) {
    sums[1] += row_loss[b];
    sums[2] += row_correct[b];
  }
  for (int q = 0; q < 3; ++q) {
    part[threadIdx.x] = sums[q];
    tree_sum(part);
    if (threadIdx.x == 0) stats[q] = part[0];
    __syncthreads();  // part[0] read before the next round overwrites it
  }
}

// the optimizer step (optim_cuda.h on lstmcore/optim_rule.h: the CPU's rules, bit for bit);
// stats[0] is the sum of squared gradients; the caller has already decided that the step is
// applied
__global__ void update_kernel(float* p, float* m, float* v, const float* grad,
                              const double* stats, std::int64_t P, UpdateRule rule) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= P) return;
  update_element(p[k], m[k], v[k], grad[k], sqrt(stats[0]), rule);
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
  mutable std::mutex mutex;  // one call at a time (see Trainer)
  std::int64_t count = 0, P = 0, step = 0;
  std::int64_t last_batch = 0;  // of the last compute(); 0: nothing to apply
  // offsets into the flat parameter buffer (from param_layout)
  std::int64_t o_w_ih = 0, o_w_hh = 0, o_bias_ih = 0, o_bias_hh = 0, o_head_w = 0, o_head_b = 0;
  ReducePlan reduce;             // the gradient norm's level one (launch.h)
  DeviceBuffer<float> images;    // (count, T, I) the training set
  DeviceBuffer<float> params, grads, m, v;  // (P,) each, laid out as param_layout
  DeviceBuffer<float> bias;      // (4H,) bias_ih + bias_hh, what the core reads
  DeviceBuffer<std::int32_t> labels;        // (count,)
  DeviceBuffer<std::int32_t> idx, predictions;  // (max_batch,)
  DeviceBuffer<float> x;         // (T, max_batch, I) time-major
  DeviceBuffer<float> gates, dgates;         // (T, max_batch, 4H)
  DeviceBuffer<float> h_all, c_all;          // (T+1, max_batch, H)
  DeviceBuffer<float> tanh_c;                // (T, max_batch, H)
  DeviceBuffer<float> logits, dlogits;       // (max_batch, C)
  DeviceBuffer<float> dh_n, dh0, dc0;        // (max_batch, H)
  DeviceBuffer<float> row_loss, row_correct;  // (max_batch,)
  DeviceBuffer<float> staging;   // (max_batch, T, I) predict's batch-major upload
  DeviceBuffer<double> partial;  // (reduce.blocks,) level one of the statistics
  DeviceBuffer<double> stats;    // (3,) sum of grad^2, sum of losses, correct count

  explicit Impl(const TrainerConfig& c) : cfg(c), ctx(c.tf32) {}

  Dims dims(std::int64_t batch) const { return Dims{cfg.steps, batch, cfg.input_size, cfg.hidden}; }

  void size_batch_buffers(std::int64_t batch) {
    const auto T = static_cast<std::size_t>(cfg.steps), B = static_cast<std::size_t>(batch);
    const auto I = static_cast<std::size_t>(cfg.input_size);
    const auto H = static_cast<std::size_t>(cfg.hidden), C = static_cast<std::size_t>(cfg.classes);
    x.grow(T * B * I);
    staging.grow(B * T * I);
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

  UpdateRule rule(double lr, std::int64_t t) const {
    return make_update_rule(cfg.optimizer, lr, cfg.momentum, cfg.weight_decay, cfg.beta1,
                            cfg.beta2, cfg.eps, cfg.clip, t, step == 0);
  }
};

Trainer::Trainer(const TrainerConfig& cfg, const std::vector<ParamSlot>& layout,
                 const float* images, const std::int32_t* labels, std::int64_t count,
                 const float* params) {
  // checked before the device is touched: a wrong layout or configuration costs nothing
  const std::vector<ParamSlot> expected = param_layout(cfg.input_size, cfg.hidden, cfg.classes);
  check_layout(layout, expected);
  if (cfg.optimizer != "adam" && cfg.optimizer != "adamw" && cfg.optimizer != "sgd") {
    throw std::invalid_argument("optimizer: expected adam, adamw or sgd, got " + cfg.optimizer);
  }
  if (cfg.max_batch < 1) {
    throw std::invalid_argument("max_batch must be >= 1, got " + std::to_string(cfg.max_batch));
  }
  if (count < 0) throw std::invalid_argument("count must be >= 0, got " + std::to_string(count));
  if (cfg.steps < 1 || cfg.input_size < 1 || cfg.hidden < 1 || cfg.classes < 1) {
    throw std::invalid_argument("steps, input_size, hidden and classes must be >= 1");
  }
  if (!std::isfinite(cfg.clip) || cfg.clip < 0.0) {
    throw std::invalid_argument("clip must be finite and >= 0");
  }
  (void)make_update_rule(cfg.optimizer, 0.0, cfg.momentum, cfg.weight_decay, cfg.beta1,
                         cfg.beta2, cfg.eps, cfg.clip, 1, true);  // the CPU's checks
  check_dims(Dims{cfg.steps, cfg.max_batch, cfg.input_size, cfg.hidden});
  // every device resource below is owned by impl (RAII): a throw part way frees what was made
  auto impl = std::make_unique<Impl>(cfg);
  Impl& s = *impl;
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
  s.reduce = reduce_plan(s.P);
  const auto P = static_cast<std::size_t>(s.P);
  cudaStream_t st = s.ctx.stream();
  s.images.upload(images, static_cast<std::size_t>(count * cfg.steps * I), st);
  s.labels.upload(labels, static_cast<std::size_t>(count), st);
  s.params.upload(params, P, st);
  s.grads.grow(P);
  s.m.grow(P);
  s.v.grow(P);
  CUDA_CHECK(cudaMemsetAsync(s.grads.data(), 0, P * sizeof(float), st));
  CUDA_CHECK(cudaMemsetAsync(s.m.data(), 0, P * sizeof(float), st));
  CUDA_CHECK(cudaMemsetAsync(s.v.data(), 0, P * sizeof(float), st));
  s.partial.grow(static_cast<std::size_t>(s.reduce.blocks));
  s.stats.grow(3);
  s.bias.grow(static_cast<std::size_t>(4 * cfg.hidden));
  s.size_batch_buffers(cfg.max_batch);
  s.ctx.synchronize();
  impl_ = std::move(impl);
}

Trainer::~Trainer() = default;

std::int64_t Trainer::param_count() const { return impl_->P; }
std::int64_t Trainer::steps() const { return impl_->cfg.steps; }
std::int64_t Trainer::input_size() const { return impl_->cfg.input_size; }

StepResult Trainer::compute(const std::int32_t* indices, std::int64_t batch) {
  Impl& s = *impl_;
  const std::lock_guard<std::mutex> lock(s.mutex);
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
  s.last_batch = 0;  // until this compute() has finished: a failed one leaves nothing to apply
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

  square_sum_kernel<<<static_cast<unsigned>(s.reduce.blocks), kReduceThreads, 0, st>>>(
      s.partial.data(), g, s.P, s.reduce.chunk);
  CUDA_CHECK_LAUNCH();
  reduce_stats_kernel<<<1, kReduceThreads, 0, st>>>(s.stats.data(), s.partial.data(),
                                                    s.reduce.blocks, s.row_loss.data(),
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

void Trainer::apply(double lr) {
  Impl& s = *impl_;
  const std::lock_guard<std::mutex> lock(s.mutex);
  if (s.last_batch == 0) throw std::logic_error("Trainer.apply: no compute() to apply");
  const std::int64_t t = s.step + 1;
  const UpdateRule rule = s.rule(lr, t);  // throws (as the CPU does) for a non-finite lr
  s.last_batch = 0;  // one update per computed gradient
  update_kernel<<<blocks_for(s.P), kThreads, 0, s.ctx.stream()>>>(
      s.params.data(), s.m.data(), s.v.data(), s.grads.data(), s.stats.data(), s.P, rule);
  CUDA_CHECK_LAUNCH();
  s.step = t;  // stream order: the next compute() sees the updated parameters
}

void Trainer::predict(const float* images, std::int64_t count, std::int64_t steps,
                      std::int64_t input_size, std::int32_t* out) {
  Impl& s = *impl_;
  const std::lock_guard<std::mutex> lock(s.mutex);
  const std::int64_t T = s.cfg.steps, I = s.cfg.input_size, chunk = s.cfg.max_batch;
  if (steps != T || input_size != I || count < 0) {
    throw std::invalid_argument("images: expected (N, " + std::to_string(T) + ", " +
                                std::to_string(I) + ") as in training, got (" +
                                std::to_string(count) + ", " + std::to_string(steps) + ", " +
                                std::to_string(input_size) + ")");
  }
  cudaStream_t st = s.ctx.stream();
  for (std::int64_t start = 0; start < count; start += chunk) {
    const std::int64_t n = std::min(chunk, count - start);
    s.staging.upload(images + start * T * I, static_cast<std::size_t>(n * T * I), st);
    to_time_major_kernel<<<blocks_for(T * n * I), kThreads, 0, st>>>(s.x.data(),
                                                                    s.staging.data(), T, n, I);
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
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->params.download(host, static_cast<std::size_t>(impl_->P), impl_->ctx.stream());
  impl_->ctx.synchronize();
}

void Trainer::get_grads(float* host) const {
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->grads.download(host, static_cast<std::size_t>(impl_->P), impl_->ctx.stream());
  impl_->ctx.synchronize();
}

void Trainer::set_params(const float* host) {
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->params.upload(host, static_cast<std::size_t>(impl_->P), impl_->ctx.stream());
  impl_->ctx.synchronize();
}

void Trainer::get_state(float* m, float* v, std::int64_t* step) const {
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  const auto P = static_cast<std::size_t>(impl_->P);
  impl_->m.download(m, P, impl_->ctx.stream());
  impl_->v.download(v, P, impl_->ctx.stream());
  impl_->ctx.synchronize();
  *step = impl_->step;
}

void Trainer::set_state(const float* m, const float* v, std::int64_t step) {
  if (step < 0) throw std::invalid_argument("step must be >= 0, got " + std::to_string(step));
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  const auto P = static_cast<std::size_t>(impl_->P);
  impl_->m.upload(m, P, impl_->ctx.stream());
  impl_->v.upload(v, P, impl_->ctx.stream());
  impl_->ctx.synchronize();
  impl_->step = step;
  impl_->last_batch = 0;  // a new state: the old gradients are not applied to it
}

}  // namespace lstmcore::cuda
