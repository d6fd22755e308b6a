"""Verdicts: pure functions of measured results (see :mod:`.core` for the rules, :mod:`.pairing` for which
networks a contrast may compare)."""
from .core import (Verdict, Role, Margin, Claim, Competence, Interval, decide, decide_within,
                   SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_APPLICABLE, OUTCOMES, COMPETENCE_GAP, LM_COMPETENCE_GAP, seed_ci,
                   seed_interval, bootstrap_ci, scope_of, inconclusive, competence_gate)
from .pairing import (pair_names, contrasts, pairs_by_seed, unpaired_reason, residual_groups, primary_residual)

__all__ = ["Verdict", "Role", "Margin", "Claim", "Competence", "Interval", "decide", "decide_within", "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "NOT_APPLICABLE", "OUTCOMES", "COMPETENCE_GAP", "LM_COMPETENCE_GAP", "seed_ci", "seed_interval", "bootstrap_ci", "scope_of", "inconclusive", "competence_gate", "pair_names", "contrasts", "pairs_by_seed", "unpaired_reason", "residual_groups", "primary_residual"]
