"""requirements.py PYPROJECT [plugin]: print the pins the image installs, one a line, from
pyproject.toml (the one list of versions): the dependencies and the `cuda` extra, or with `plugin`
DALI's TF plugin, which is built against the installed TensorFlow. The image's build and its test
(tests/test_docker_and_cli.py) both use this."""
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(extras["tf-plugin"] if sys.argv[2:] == ["plugin"] else project["dependencies"] + extras["cuda"]))
