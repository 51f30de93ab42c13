"""
The nodes' logic that needs no ROS: it runs anywhere, Python 3.8 included, and imports no rclpy.

- :mod:`.params`: the parameter spec (:class:`~.params.Param`), the checks rclpy does not make
  (choices), the parameter names a node was given (``--params-file``, ``-p``) and the one-line
  start-up errors.
- :mod:`.config`: every node's parameters, their cross-parameter checks and what they map to.
- :mod:`.workers`: the worker thread with its newest-frame slot, rate meters, stage timers,
  rate-limited logs, stamp order checks, frame health, log forwarding, giving the heap back
  after a burst.
- :mod:`.middleware`: DDS set-up (Fast DDS profile variables, Cyclone DDS configuration, the
  message-size limit, shared-memory clean-up).

``depth_ros.ros`` is the ROS glue: the only package that imports rclpy and message types.
"""
