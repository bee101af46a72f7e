"""Balancing strategy plugins for photogate.

Drop a module here that defines ``STRATEGY = YourClass`` and name it in
``balancer.strategy`` (the module's file name). See README, "Writing a strategy".
"""
