"""MetaController: emergent temporal abstractions in autoregressive models (Kobayashi et al., 2025)."""
from metacontroller.meta_controller import DiscoveryOutput, MetaController, MetaControllerStep
from metacontroller.subgoal_controller import SubgoalController
from metacontroller.switching import periodic_beta
from metacontroller.transformer import BehaviourCloningLosses, DiscoveryLosses, NextEventLosses, Transformer, TransformerCache
from metacontroller.version import __version__ as __version__

__all__ = [
    'Transformer', 'MetaController', 'SubgoalController', 'periodic_beta',
    'BehaviourCloningLosses', 'DiscoveryLosses', 'NextEventLosses', 'DiscoveryOutput', 'MetaControllerStep', 'TransformerCache',
]
