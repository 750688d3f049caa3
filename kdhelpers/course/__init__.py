"""Course machinery that notebooks never import: the notebook runner, the README writer, the CLI.

python -m kdhelpers.course run --profile quick --only 05            # one chapter
python -m kdhelpers.course run --profile standard --in-place        # refresh the committed outputs
python -m kdhelpers.course table | readme [--check]
"""
