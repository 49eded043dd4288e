"""Built-in permutation rules for symmetry discovery: the standard table of op rules."""

from modeconn.plugin import builtin_rules, hookimpl


@hookimpl
def modeconn_register_rules(registry) -> None:
    for key, rule in builtin_rules().items():
        registry.add(key, rule)
