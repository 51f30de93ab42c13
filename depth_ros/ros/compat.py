"""
What differs between the ROS 2 distributions depth_ros runs on, in one place.

Tested: Humble (rclpy 3.3.15, Fast DDS 2.6 and Cyclone DDS 0.10, Python 3.8: the robot's
JetPack 5) and Kilted (rclpy 9.1 from the PyPI wheels, Fast DDS 3.2, Python 3.11). The code in
between is written to the Humble API; where a later rclpy does better, this module says from
which version and picks it. Nothing here imports rclpy at import time (the launch file and the
tests' set-up import it before any ROS environment is known).

==========================================  ===================================================
difference                                  versions
==========================================  ===================================================
post-set parameter callback                 rclpy >= 3.7 (Iron and later); Humble (3.3) has
(``add_post_set_parameters_callback``)      only the on-set callback
``rclpy.signals.SignalHandlerOptions``      rclpy >= 3.1 (Humble and later)
``rclpy.try_shutdown()``                    rclpy >= 1.0 (every supported distro)
parameter overrides of a node               ``Node._parameter_overrides`` (3.3 .. 9.x: no public
                                            getter), read only through :func:`overrides`
Fast DDS profile variable                   Fast DDS 2 (Humble, Iron, Jazzy):
                                            ``FASTRTPS_DEFAULT_PROFILES_FILE``; Fast DDS 3
                                            (Kilted and later): ``FASTDDS_DEFAULT_PROFILES_FILE``
                                            (and a warning at every start if it finds the old one)
==========================================  ===================================================
"""
from __future__ import annotations

from typing import Dict, Optional

# Distributions whose Fast DDS is 2.x (reads FASTRTPS_DEFAULT_PROFILES_FILE only).
FAST_DDS_2_DISTROS = ('foxy', 'galactic', 'humble', 'iron', 'jazzy')


def has_post_set_parameters_callback(node) -> bool:
    """Return whether ``node`` (rclpy >= 3.7, Iron+) has ``add_post_set_parameters_callback``."""
    return callable(getattr(node, 'add_post_set_parameters_callback', None))


def init(args=None) -> None:
    """
    ``rclpy.init`` without rclpy's own signal handlers (SignalHandlerOptions: rclpy >= 3.1).

    Our nodes install their own SIGINT/SIGTERM handling (runtime.run_node), which stops the
    worker threads before the context; rclpy's handler would shut the context down at once,
    under a worker that is still publishing a frame.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def shutdown() -> None:
    """Shut the default context down unless that already happened (``rclpy.try_shutdown``)."""
    import rclpy
    rclpy.try_shutdown()


def overrides(node) -> Dict[str, object]:
    """Return the parameter values given to ``node`` by a params file or ``-p``, by name."""
    return dict(getattr(node, '_parameter_overrides', None) or {})


def declared_names(node) -> Optional[set]:
    """Return the names of the parameters ``node`` has declared (use_sim_time ...), or None."""
    params = getattr(node, '_parameters', None)
    return set(params) if params is not None else None
