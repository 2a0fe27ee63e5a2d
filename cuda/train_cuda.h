// train_cuda.h: device-resident training of the sequence classifier (LSTM -> Linear -> softmax
// cross-entropy) with SGD or Adam/AdamW and gradient-norm clipping, by the same rules as
// lstmcore.optim. The training set is uploaded once; per step only the batch's indices go up
// and the loss and correct-count come back. Parameters live in one flat float buffer laid out
// as param_layout() says: lstm.weight_ih_l0 (4H, I), lstm.weight_hh_l0 (4H, H),
// lstm.bias_ih_l0 (4H), lstm.bias_hh_l0 (4H) (torch's two biases, summed once per forward for
// the core; both get the summed bias's gradient), head.weight (C, H), head.bias (C): the host
// model's own order. Callers hand their layout over and the trainer refuses any other, so a
// renamed or reordered parameter raises instead of scrambling the weights.
//
// A step is two calls: compute() (gradients, loss, gradient norm; no parameter changes), then,
// when the caller's divergence rule (lstmcore.stepper.divergence, the one copy of it) allows,
// apply().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lstm_cuda.h"

namespace lstmcore::cuda {

struct TrainerConfig {
  std::int64_t steps = 28, input_size = 28, hidden = 128, classes = 10, max_batch = 128;
  std::string optimizer = "adam";  // adam, adamw or sgd
  // in double, as the host optimizer holds them (Python floats): the update's scalars are
  // formed from these exactly as the CPU forms them (lstmcore/optim_rule.h)
  double momentum = 0.0, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double clip = 0.0;  // max gradient norm; 0: no clipping
  bool tf32 = false;
};

struct StepResult {
  double loss = 0.0;         // mean over the batch
  std::int64_t correct = 0;  // argmax == label
  double grad_norm = 0.0;    // before clipping; not finite when a gradient is not
};

// one named block of the flat parameter buffer
struct ParamSlot {
  std::string name;
  std::int64_t size = 0;
};

// The flat parameter layout, in order: the single definition of the offsets.
std::vector<ParamSlot> param_layout(std::int64_t input_size, std::int64_t hidden,
                                    std::int64_t classes);

// std::invalid_argument naming the first slot where `given` differs from `expected`.
void check_layout(const std::vector<ParamSlot>& given, const std::vector<ParamSlot>& expected);

// Every method takes a per-trainer lock: calls from several threads take turns.
class Trainer {
 public:
  // `layout` is the caller's order of `params`; it must equal param_layout(cfg)
  Trainer(const TrainerConfig& cfg, const std::vector<ParamSlot>& layout, const float* images,
          const std::int32_t* labels, std::int64_t count, const float* params);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  std::int64_t param_count() const;
  std::int64_t steps() const;       // T of the training set
  std::int64_t input_size() const;  // I of the training set
  // loss, correct-count and gradients of the batch `indices`; changes no parameter
  StepResult compute(const std::int32_t* indices, std::int64_t batch);
  // the optimizer update from the last compute()'s gradients (clipped by their norm)
  void apply(double lr);
  // argmax of the logits of images (count, steps, input_size); std::invalid_argument unless
  // (steps, input_size) is the training shape
  void predict(const float* images, std::int64_t count, std::int64_t steps,
               std::int64_t input_size, std::int32_t* out);
  void get_params(float* host) const;
  // the last compute()'s gradients (before clipping), laid out as the parameters
  void get_grads(float* host) const;
  void set_params(const float* host);
  // m: Adam's first moment or SGD's momentum buffer; v: Adam's second moment
  void get_state(float* m, float* v, std::int64_t* step) const;
  void set_state(const float* m, const float* v, std::int64_t step);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lstmcore::cuda
