"""``python -m utils.config``: print the key reference table; ``--update-readme`` writes it into the README."""

import sys

from utils.config.reference import README, readme_with_reference, reference_markdown

if sys.argv[1:] == ["--update-readme"]:
    README.write_text(readme_with_reference(README.read_text(encoding="utf-8")), encoding="utf-8")
else:
    print(reference_markdown())
