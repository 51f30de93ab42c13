"""
Offline tools behind the thin `depth-ros` commands: evaluation, benchmark, bag processing.

They import numpy and OpenCV at the top; matplotlib, torch, rosbags and the rest lazily.
"""
