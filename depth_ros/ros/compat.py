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
parameter exception text                    ``str()`` of InvalidParameterValueException is a
                                            tuple on Humble; ``args[0]`` is the message on both
Fast DDS profile variable                   Fast DDS 2 (Humble, Iron, Jazzy):
                                            ``FASTRTPS_DEFAULT_PROFILES_FILE``; Fast DDS 3
                                            (Kilted and later): ``FASTDDS_DEFAULT_PROFILES_FILE``
                                            (and a warning at every start if it finds the old one)
==========================================  ===================================================
"""
from __future__ import annotations

# Distributions whose Fast DDS is 2.x (reads FASTRTPS_DEFAULT_PROFILES_FILE only).
FAST_DDS_2_DISTROS = ('foxy', 'galactic', 'humble', 'iron', 'jazzy')


def has_post_set_parameters_callback(node) -> bool:
    """Return whether ``node`` (rclpy >= 3.7, Iron+) has ``add_post_set_parameters_callback``."""
    return callable(getattr(node, 'add_post_set_parameters_callback', None))


def init(args=None) -> None:
    """
    ``rclpy.init`` without rclpy's own signal handlers (SignalHandlerOptions: rclpy >= 3.1).

    run_node handles SIGINT/SIGTERM itself (runtime.Signals says why and which test shows it).
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def shutdown() -> None:
    """Shut the default context down unless that already happened (``rclpy.try_shutdown``)."""
    import rclpy
    rclpy.try_shutdown()
