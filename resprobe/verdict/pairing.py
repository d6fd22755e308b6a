"""Which networks a verdict may compare: twins of one architecture trained with one known recipe, paired by
seed; residual groups."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


from .core import Role

__all__ = ["pair_names", "contrasts", "pairs_by_seed", "unpaired_reason", "residual_groups", "primary_residual"]


def pair_names(pairs: Sequence[tuple]) -> list[str]:
    """The labels of ``(residual, plain, seed)`` pairs, residual then plain, in pair order."""
    return [x for r, p, *_ in pairs for x in (r, p)]


def _groups(roles: Mapping[str, Role]) -> dict[tuple, dict]:
    groups: dict[tuple, dict] = {}
    for lab, r in roles.items():
        groups.setdefault((r.residual, r.group), {})[r.seed] = lab
    return groups


def _twins(roles: Mapping[str, Role], rmap: dict, pmap: dict) -> bool:
    """One known recipe (unknown never equals unknown) and one architecture for every network."""
    members = [roles[x] for x in list(rmap.values()) + list(pmap.values())]
    recipes = {m.recipe for m in members}
    if len(recipes) != 1 or None in recipes or any(m.arch is None for m in members):
        return False
    layouts = {m.arch[0] for m in members}
    params = [m.arch[1] for m in members]
    return len(layouts) == 1 and max(params) <= 1.1 * min(params)


def contrasts(roles: Mapping[str, Role]) -> list[list[tuple[str, str, Optional[int]]]]:
    """Every residual group matched with an equal-recipe plain twin group, as ``(residual, plain, seed)``
    pairs by seed (without seeds, one network of each). A residual group is matched with the plain group
    that gives most pairs; networks whose recipes differ or are unknown, or whose architectures differ, are
    never paired: a contrast between them would measure the recipe or the depth."""
    groups = _groups(roles)
    out = []
    for (res, rg), rmap in groups.items():
        if not res:
            continue
        best: list = []
        for (pres, pg), pmap in groups.items():
            if pres or not _twins(roles, rmap, pmap):
                continue
            common = sorted(set(rmap) & set(pmap), key=lambda s: (s is None, s))
            pairs = [(rmap[s], pmap[s], s) for s in common]
            if not pairs and len(rmap) == 1 and len(pmap) == 1:
                pairs = [(next(iter(rmap.values())), next(iter(pmap.values())), None)]
            if len(pairs) > len(best):
                best = pairs
        if best:
            out.append(best)
    return out


def pairs_by_seed(roles: Mapping[str, Role]) -> list[tuple[str, str, Optional[int]]]:
    """The largest contrast of :func:`contrasts` (``[]`` when there is none)."""
    return max(contrasts(roles), key=len, default=[])


def unpaired_reason(roles: Mapping[str, Role]) -> str:
    """Why no residual/plain contrast could be made."""
    res = [r for r in roles.values() if r.residual]
    plain = [r for r in roles.values() if not r.residual]
    if not res:
        return "no residual network was given"
    if not plain:
        return "no plain twin was given (pass a plain network trained with the same recipe)"
    if any(r.recipe is None for r in res + plain):
        return ("a network has no recorded training recipe (as for networks trained by others): an unknown "
                "recipe never equals another, so no contrast is made")
    if len({r.recipe for r in res + plain}) > 1:
        return ("the plain twin was not trained with the residual network's recipe: a contrast would measure "
                "the recipe, so none is made")
    return ("the plain network is not a twin of the residual one (another depth or layout of units): a contrast "
            "would measure the architecture, so none is made")


def residual_groups(roles: Mapping[str, Role]) -> list[list[str]]:
    """The labels of every residual group (its seeds), in the order the networks were given."""
    out: dict[str, list[str]] = {}
    for lab, r in roles.items():
        if r.residual:
            out.setdefault(r.group, []).append(lab)
    return list(out.values())


def primary_residual(roles: Mapping[str, Role]) -> list[str]:
    """The labels of the first residual group (its seeds)."""
    g = residual_groups(roles)
    return g[0] if g else []
