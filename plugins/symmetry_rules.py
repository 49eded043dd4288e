"""Built-in permutation rules for symmetry discovery: the standard table of op rules."""

from modeconn import hookimpl


@hookimpl
def modeconn_permutation_rules(registry) -> None:
    from modeconn.symmetry.rules import register_builtin_rules

    register_builtin_rules(registry)
