"""Model surgery and hooks: a model seen as stem -> residual units (F, S, post) -> head."""
from .hooks import frozen_eval, hook_count, preserved_state
from .parts import (SHORTCUT_KINDS, UNIT_KINDS, UnitParts, register_adapter_module, register_block,
                    registered_block_types, unregister_block)
from .units import PARALLEL_MODES, AnatomyError, BlockInfo, Edits, Op, Step, Unit
from .blocks import find_blocks, register_model
from .view import ResidualView, anatomy

__all__ = ["UnitParts", "SHORTCUT_KINDS", "UNIT_KINDS", "register_block", "unregister_block",
           "registered_block_types", "register_adapter_module", "frozen_eval", "hook_count",
           "preserved_state", "AnatomyError", "Unit", "BlockInfo", "Edits", "Op", "Step", "ResidualView", "anatomy",
           "register_model", "find_blocks", "PARALLEL_MODES"]
