"""proj: MNIST classifiers with PyTorch Lightning, a template to start from.

data/       LightningDataModules (MNIST): files, splits, transforms, loaders
models/     LightningModules: one shared base (steps, metrics, optimizers) and the networks
schedulers  learning-rate schedules beyond torch's own
callbacks/  TensorBoard figures and hparams
cli.py      LightningCLI with this project's defaults; fit.py trains and tests
"""
