"""Adapter modules: each registers the block types of one model package with
:func:`resprobe.anatomy.register_block`. The anatomy imports one lazily, the first time it sees a
model built from that package. Blocks of other packages are decomposed from their own ``forward``
(:func:`resprobe.anatomy.decompose.auto_units`); an adapter is needed only where that fails."""
