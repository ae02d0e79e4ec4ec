"""Metamer synthesis: feature and structure metamers as optax loops vmapped over seeds."""

from jmeta.metamers.api import feature_metamers, structure_metamers
from jmeta.metamers.config import MetamerConfig
from jmeta.metamers.result import MetamerResult

__all__ = ["MetamerConfig", "MetamerResult", "feature_metamers", "structure_metamers"]
