"""Model surgery and hooks: a model seen as stem -> residual units (F, S, post) -> head."""
from .hooks import Trace, frozen_eval, hook_count, preserved_state
from .parts import (SHORTCUT_KINDS, UNIT_KINDS, UnitParts, register_adapter_module, register_block,
                    registered_block_types, unregister_block)
from .view import (PARALLEL_MODES, AnatomyError, BlockInfo, Edits, ResidualView, Step, Unit, anatomy, find_blocks,
                   register_model)

__all__ = ["UnitParts", "SHORTCUT_KINDS", "UNIT_KINDS", "register_block", "unregister_block",
           "registered_block_types", "register_adapter_module", "Trace", "frozen_eval", "hook_count",
           "preserved_state", "AnatomyError", "Unit", "BlockInfo", "Edits", "Step", "ResidualView", "anatomy",
           "register_model", "find_blocks", "PARALLEL_MODES"]
