"""Classifiers as LightningModules. Add a model as a module here: a plain `nn.Module` for the network and an
`ImageClassifier` subclass whose constructor arguments are its hyperparameters; export it below and
`--model NAME` finds it."""

from proj.models.base import ImageClassifier
from proj.models.cnn import CNNClassifier
from proj.models.mlp import MLPClassifier
from proj.models.timm_classifier import TimmClassifier

__all__ = ["CNNClassifier", "ImageClassifier", "MLPClassifier", "TimmClassifier"]
