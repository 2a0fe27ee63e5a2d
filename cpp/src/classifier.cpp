// classifier.cpp: a whole stack and its head per call, on weights packed once (see
// lstmcore/classifier.h). The per-layer work is lstm_forward on PackedForward weights: the
// same kernels, schedule and results as a layer-by-layer forward.
#include "lstmcore/classifier.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace lstmcore {
namespace {

using i64 = std::int64_t;

template <typename S>
void copy_n(S* dst, const S* src, i64 n) {
  if (n > 0) std::memcpy(dst, src, sizeof(S) * static_cast<std::size_t>(n));
}

// the calling thread's buffers, grown as needed and reused by its later calls
template <typename S>
struct Workspace {
  std::vector<S> h_all, c_all;          // (T+1, B, H) one direction's states
  std::vector<S> layer_in, layer_out;   // (T, B, D*H) a layer's output, the next one's input
  std::vector<S> features;              // (B, D*H) the top layer's final states
};

template <typename S>
Workspace<S>& workspace() {
  thread_local Workspace<S> w;
  return w;
}

template <typename S>
void grow(std::vector<S>& v, i64 n) {
  if (static_cast<i64>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

}  // namespace

template <typename S>
StackInference<S>::StackInference(const StackShape& shape, Precision precision)
    : shape_(shape), precision_(precision) {
  if (shape.layers < 1 || (shape.directions != 1 && shape.directions != 2) || shape.I < 0 ||
      shape.H < 0) {
    throw std::invalid_argument("stack: expected layers >= 1, directions 1 or 2, I and H >= 0");
  }
  check_dims(Dims{1, 1, std::max(shape.I, shape.directions * shape.H), shape.H});
}

template <typename S>
i64 StackInference<S>::input_of(i64 layer) const {
  return layer == 0 ? shape_.I : shape_.directions * shape_.H;
}

template <typename S>
bool StackInference<S>::same(const Cell& cell, const CellWeights<S>& w, i64 inputs) const {
  const i64 G = 4 * shape_.H;
  const S* snap = cell.snapshot.data();
  const auto bytes = [](i64 n) { return sizeof(S) * static_cast<std::size_t>(n); };
  return std::memcmp(snap, w.w_ih, bytes(G * inputs)) == 0 &&
         std::memcmp(snap + G * inputs, w.w_hh, bytes(G * shape_.H)) == 0 &&
         std::memcmp(snap + G * (inputs + shape_.H), w.b_ih, bytes(G)) == 0 &&
         std::memcmp(snap + G * (inputs + shape_.H + 1), w.b_hh, bytes(G)) == 0;
}

template <typename S>
std::shared_ptr<const typename StackInference<S>::Cell> StackInference<S>::pack(
    const CellWeights<S>& w, i64 inputs) const {
  const i64 H = shape_.H, G = 4 * H;
  auto cell = std::make_shared<Cell>();
  cell->packed = std::make_shared<const PackedForward<S>>(w.w_ih, w.w_hh, inputs, H, precision_);
  cell->bias.resize(static_cast<std::size_t>(G));
  for (i64 k = 0; k < G; ++k) cell->bias[static_cast<std::size_t>(k)] = w.b_ih[k] + w.b_hh[k];
  cell->snapshot.resize(static_cast<std::size_t>(G * (inputs + H + 2)));
  S* snap = cell->snapshot.data();
  copy_n(snap, w.w_ih, G * inputs);
  copy_n(snap + G * inputs, w.w_hh, G * H);
  copy_n(snap + G * (inputs + H), w.b_ih, G);
  copy_n(snap + G * (inputs + H + 1), w.b_hh, G);
  return cell;
}

template <typename S>
typename StackInference<S>::Snapshot StackInference<S>::current(
    const std::vector<CellWeights<S>>& cells) {
  const i64 n = shape_.layers * shape_.directions;
  if (static_cast<i64>(cells.size()) != n) {
    throw std::invalid_argument("cells: expected " + std::to_string(n) + " (layers x directions), got " +
                                std::to_string(cells.size()));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  cells_.resize(static_cast<std::size_t>(n));
  for (i64 k = 0; k < n; ++k) {
    auto& slot = cells_[static_cast<std::size_t>(k)];
    const i64 inputs = input_of(k / shape_.directions);
    const CellWeights<S>& w = cells[static_cast<std::size_t>(k)];
    if (!slot || !slot->packed->current() || !same(*slot, w, inputs)) {
      slot = pack(w, inputs);
      ++packs_;
    }
  }
  return cells_;
}

template <typename S>
i64 StackInference<S>::packs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return packs_;
}

template <typename S>
void StackInference<S>::logits(S* out, const S* x, i64 T, i64 B,
                               const std::vector<CellWeights<S>>& cells, const S* head_w,
                               const S* head_b, i64 C) {
  const i64 H = shape_.H, D = shape_.directions, L = shape_.layers, DH = D * H;
  check_dims(Dims{T, B, std::max(shape_.I, DH), H});
  check_matmul(B, C, DH);
  const Snapshot snap = current(cells);
  Workspace<S>& ws = workspace<S>();
  grow(ws.h_all, (T + 1) * B * H);
  grow(ws.c_all, (T + 1) * B * H);
  grow(ws.features, B * DH);
  if (L > 1) {
    grow(ws.layer_in, T * B * DH);
    grow(ws.layer_out, T * B * DH);
  }
  const S* inp = x;
  for (i64 layer = 0; layer < L; ++layer) {
    const bool top = layer == L - 1;
    const Dims d{T, B, input_of(layer), H};
    for (i64 dir = 0; dir < D; ++dir) {
      const Cell& cell = *snap[static_cast<std::size_t>(layer * D + dir)];
      const bool reverse = dir == 1;
      const LstmCache<S> cache{nullptr, ws.h_all.data(), ws.c_all.data(), nullptr};
      lstm_forward<S>(cache, inp, nullptr, nullptr, *cell.packed, cell.bias.data(), d, reverse);
      if (top) {  // h_n of this direction: columns [dir*H, dir*H + H) of the features
        const S* h_n = ws.h_all.data() + final_slot(d, reverse) * B * H;
        for (i64 b = 0; b < B; ++b) copy_n(ws.features.data() + b * DH + dir * H, h_n + b * H, H);
        continue;
      }
      for (i64 t = 0; t < T; ++t) {  // y[t] of this direction into the next layer's input
        const S* y_t = ws.h_all.data() + (reverse ? t : t + 1) * B * H;
        S* row = ws.layer_out.data() + t * B * DH + dir * H;
        for (i64 b = 0; b < B; ++b) copy_n(row + b * DH, y_t + b * H, H);
      }
    }
    if (!top) {
      std::swap(ws.layer_in, ws.layer_out);
      inp = ws.layer_in.data();
    }
  }
  if (B == 0 || C == 0) return;
  matmul<S>(out, ws.features.data(), head_w, B, C, DH, DH, DH, false, true);
  for (i64 b = 0; b < B; ++b) {
    for (i64 k = 0; k < C; ++k) out[b * C + k] += head_b[k];
  }
}

template <typename S>
void StackInference<S>::step(S* y, S* h, S* c, const S* x, i64 B,
                             const std::vector<CellWeights<S>>& cells) {
  if (shape_.directions != 1) {
    throw std::invalid_argument("stream: a bidirectional stack cannot run one step at a time");
  }
  const i64 H = shape_.H, BH = B * H;
  check_dims(Dims{1, B, std::max<i64>(shape_.I, H), H});
  const Snapshot snap = current(cells);
  Workspace<S>& ws = workspace<S>();
  grow(ws.h_all, 2 * BH);
  grow(ws.c_all, 2 * BH);
  const S* inp = x;
  for (i64 layer = 0; layer < shape_.layers; ++layer) {
    const Cell& cell = *snap[static_cast<std::size_t>(layer)];
    S* h_l = h + layer * BH;
    S* c_l = c + layer * BH;
    const LstmCache<S> cache{nullptr, ws.h_all.data(), ws.c_all.data(), nullptr};
    lstm_forward<S>(cache, inp, h_l, c_l, *cell.packed, cell.bias.data(),
                    Dims{1, B, input_of(layer), H});
    copy_n(h_l, ws.h_all.data() + BH, BH);  // slot 1: the state after this step
    copy_n(c_l, ws.c_all.data() + BH, BH);
    inp = h_l;
  }
  copy_n(y, h + (shape_.layers - 1) * BH, BH);
}

template class StackInference<float>;
template class StackInference<double>;

}  // namespace lstmcore
