"""``python -m lstmcore.bench``: lstmcore against its peers on the same model.

The model is the same everywhere: an LSTM (one layer unless the case says more; forget-gate
bias 1, which keeps long sequences' gradients out of slow denormal floats), a Linear layer to
10 classes, softmax cross-entropy, float32 (the NumPy reference: float64). Each case is one of
these kinds:
  train   a training step: forward, backward and an Adam update. The grid's cases (--cases
          grid) vary T, B, I, H, the layers (1-3) and the directions; "seq" cases put the loss
          on every step's output (sequence labelling: a fixed random projection of y), the
          others on the last step's (classification)
  infer   inference: the forward pass to the logits
  stream  one time step of a unidirectional LSTM with its state carried (lstmcore's
          LSTM.stream, onnxruntime's LSTM op on a T=1 graph with the state fed back in, torch's
          LSTM on one step with (h, c)): the per-step latency of real-time use
  varlen  a training step over sequences whose lengths are uniform in [1, T] (one fixed draw
          per case): lstmcore given the lengths (lstmcore-lengths) and over the padded batch
          ignoring them (lstmcore-padded); PyTorch through pack_padded_sequence(
          enforce_sorted=False) -> LSTM -> pad_packed_sequence (torch-packed) and over the padded
          batch (torch-padded). Every contender computes the whole output sequence; the loss
          reads the final states (each sequence's own last step where lengths are honoured).

Contenders (--contenders; each skipped with a note when its library is not importable, and
never a dependency of lstmcore):
  lstmcore     this package (nn.SequenceClassifier and optim.Adam; ops for varlen)
  reference    lstmcore.reference, the readable NumPy specification (float64, so its "of
               floor" is against the float32 floor; slow)
  torch        torch.nn.LSTM + torch.nn.Linear + torch.optim.Adam (pip install torch)
  onnxruntime  inference only: ONNX's own LSTM operator, built with the onnx package from the
               same weights (gates reordered to ONNX's i, o, f, c) plus a Gemm head;
               intra_op_num_threads = the row's threads, inter_op 1. At start-up its logits are
               compared with lstmcore's on the same weights and input: a max abs difference
               over 1e-4 refuses it with a note (pip install onnx onnxruntime)
  keras        Keras 3 on JAX, only at all cores (XLA sizes its pool once per process)

Precision (--precision fp32, bf16 or both): bf16 adds lstmcore-bf16 (nn.SequenceClassifier
with precision="bf16": bf16-rounded GEMM operands, float32 parameters, states and Adam) and
torch-bf16 (the same torch model under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
one-line mixed precision, its fastest honest bf16 mode on the CPU), for training and inference.
A bf16 row's "x lstmcore" is against lstmcore-bf16. lstmcore's bf16 path here is emulated on
its float32 kernels (no AMX or AVX512-BF16 kernels in this build): its floor is the sgemm rate.

Modes (--mode):
  isolated     (the default) each contender library runs alone in its own process (this
               module started as a worker, its results as JSON on stdout), the libraries
               alternated over --rounds rounds; a row gives the median of the rounds' medians
               and their range. The default because thread pools (OpenMP in PyTorch,
               onnxruntime's, OpenBLAS's) keep spinning after a call and tax whatever runs next
               in the same process: on a 2-core Xeon lstmcore's 2-thread inference at B=128 went
               from 4.4 to 8.0 ms when it shared a process with PyTorch and onnxruntime.
  interleaved  one process; the contenders' steps interleaved in blocks (A x block, B x block,
               A x block, ...; each block after one untimed step that absorbs the previous
               library's spinning threads); the median and interquartile range over steps.
               Quicker, and every contender sees the same moment's machine noise.
Warm-up steps are excluded in both modes.

FLOPs (a multiply-add counts 2; C = 10 classes): training 2*B*T*4H*(2I + 3H) + 6*B*H*C (input,
recurrent and both weight-gradient GEMMs, the dh GEMM; dx is not needed for the first layer),
inference 2*T*B*4H*(I + H) + 2*B*H*C; varlen rows count the real work only (B*T replaced by
the sum of the lengths), so a padded contender shows the cost of its padding. The floor is
FLOPs over the sgemm rate of lstmcore's own BLAS (a 2048^3 sgemm through lstmcore's time_sgemm
at the row's thread count, the best of three medians of five); "of floor" = floor / median
time, for every contender.

The header names the CPU, the cores, lstmcore's ISA path and BLAS core, the libraries'
versions and whether OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were set (they change the BLAS
kernels; this benchmark never changes them: unset them yourself with env -u to compare).

Reproduce the README's table:  python -m lstmcore.bench --json bench.json
"""

# the modules, one concept each (python -m lstmcore.bench runs cli.main):
#   cases        the model's constants, the cases and their groups, the work of a step
#   contenders/  one module per library family, and BUILDERS, CONTENDERS, baseline()
#   measure      timing in one process, and the isolated mode's worker processes
#   host         the machine: CPU, kernels, versions, the sgemm rate (the floor)
#   tables       the rows and the printed and Markdown tables
#   args, cli    the command line
