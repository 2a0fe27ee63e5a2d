"""The MNIST application on the library: the training run and its settings (config, run,
stepper), checkpoints, the data, the sequence tasks and the trained classifier (model), its
ONNX export, image preparation for photos (imaging) and training augmentation (augment).

The command lines in :mod:`lstmcore.cli` drive it; it imports only the library below it.
"""
