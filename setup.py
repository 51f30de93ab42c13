"""
ament_python package and pip package in one tree.

`colcon build` installs the executables in lib/depth_ros and the launch, config and rviz files
in share/depth_ros (setup.cfg and data_files below); `pip install -e '.[...]'` works on a
machine without ROS.
"""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'depth_ros'
TORCH = 'torch==2.13.0'

# What an installed executable checks before its module loads. The console-script wrapper that
# setuptools < 47 writes (Ubuntu 20.04 / JetPack 5: setuptools 45.2, as colcon runs
# `setup.py install --single-version-externally-managed`) resolves every install_requires entry
# through pip metadata, and so does any later `import pkg_resources` in that process (its
# `__requires__` check). JetPack's OpenCV (apt) has no pip metadata, nor has anything that is not
# installed at all: on the ROS path the dependencies are package.xml's rosdep keys, and only
# numpy stays here, which has metadata from every channel (apt's egg-info, pip, conda).
INSTALL_REQUIRES = ['setuptools', 'numpy']
# The pip names of package.xml's python3-numpy, python3-opencv, python3-yaml, python3-tqdm. Every
# extra for a machine without ROS or JetPack pulls them; `onnx`, `tensorrt` and `bag` do not, so
# that `pip install -e '.[onnx]'` on a Jetson never shadows JetPack's OpenCV with a pip one.
BASE = ['numpy', 'opencv-python-headless', 'PyYAML', 'tqdm']


def _files(pattern):
    return sorted(f for f in glob(pattern) if os.path.isfile(f))


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', _files('launch/*.py')),
        ('share/' + PACKAGE + '/config', _files('config/*.yaml') + _files('config/*.xml')),
        ('share/' + PACKAGE + '/rviz', _files('rviz/*.rviz')),
        ('share/' + PACKAGE + '/models', ['models/README.md']),
    ],
    python_requires='>=3.8',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'base': BASE,
        # ROS 2 wheels from PyPI, for machines without a ROS install (tests, laptops).
        'ros': BASE + [
            'ros-rclpy', 'ros-sensor-msgs', 'ros-std-msgs', 'ros-std-srvs',
            'ros-diagnostic-msgs', 'ros-rmw-fastrtps-cpp',
        ],
        # ONNX Runtime, and what model: auto needs on a robot without torch: the hub client
        # (the community ONNX file) and filelock (preparing it once across processes).
        'onnx': ['onnxruntime', 'onnx', 'huggingface_hub', 'filelock'],
        'export': BASE + [TORCH, 'transformers', 'huggingface_hub', 'safetensors', 'onnx',
                          'onnxscript'],
        'marigold': BASE + [TORCH, 'diffusers', 'transformers', 'huggingface_hub',
                            'safetensors', 'scipy'],
        # On a Jetson, TensorRT and its Python bindings come with JetPack (apt), not pip.
        'tensorrt': ['pycuda', 'tensorrt'],
        'bag': ['rosbags'],
        'tools': BASE + ['matplotlib', 'scikit-image', 'rosbags'],
        # colcon test runs pytest only for a package that declares it as a test dependency;
        # the ament_python template's tests_require is dropped by setuptools >= 72.
        'test': ['pytest'],
        'dev': BASE + ['pytest<8.4', 'pytest-timeout', 'flake8', 'flake8-import-order',
                       'pydocstyle', 'ros-ament-flake8', 'ros-ament-pep257',
                       'colcon-common-extensions', 'matplotlib', 'scikit-image', 'rosbags'],
    },
    zip_safe=True,
    maintainer='depth_ros maintainers',
    maintainer_email='depth-ros@example.com',
    description='Metric depth from ZED2 stereo and Depth Anything V2 for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'depth-ros = depth_ros.cli:main',
            # depth_ros.ros.entry: a stop signal while the node's module imports is quiet.
            'zed_node = depth_ros.ros.entry:zed_node',
            'depth_node = depth_ros.ros.entry:depth_node',
            'alignment_node = depth_ros.ros.entry:alignment_node',
            'marigold_node = depth_ros.ros.entry:marigold_node',
            'composed_nodes = depth_ros.ros.entry:composed_nodes',
        ],
    },
)
