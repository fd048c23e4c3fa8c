"""The compiler: resolution, schema, design rules, lowering, graphs, analysis and module building.

Import the pieces from their modules (`lmspec.compiler.api`, `lmspec.compiler.build`, ...);
this package imports nothing heavy on its own so that `lmspec check` stays fast.
"""
