"""Depth Anything V2 backends behind one interface (see depth_ros/inference/base.py)."""
