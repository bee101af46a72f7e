"""Node health: the rule that marks a node up or down (:mod:`.rule`, no project imports) and
the monitor that probes every node's ``/health`` (:mod:`.monitor`).

Import the submodule you need: this package imports nothing, so the registries can use the
rule without loading the monitor's HTTP client code.
"""
