"""ament_flake8, as `colcon test` runs it on a ROS install (and here, from its PyPI wheel)."""
import pytest


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    main = pytest.importorskip(
        'ament_flake8.main', reason='ament_flake8 is not installed (ros-ament-flake8)')
    rc, errors = main.main_with_errors(argv=[])
    assert rc == 0, 'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)
