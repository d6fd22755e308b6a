"""Model surgery and hooks: a model seen as stem -> residual blocks (F, S, post) -> head."""
from .adapters import BlockParts, SHORTCUT_KINDS, register_block, registered_block_types, unregister_block
from .hooks import Trace, frozen_eval, hook_count, preserved_state
from .view import AnatomyError, Block, Edits, ResidualView, anatomy, register_model

__all__ = ["BlockParts", "SHORTCUT_KINDS", "register_block", "unregister_block", "registered_block_types",
           "Trace", "frozen_eval", "hook_count", "preserved_state", "AnatomyError", "Block", "Edits", "ResidualView",
           "anatomy", "register_model"]
