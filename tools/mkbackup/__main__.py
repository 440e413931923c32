"""`python -m tools.mkbackup ...`"""

from tools.mkbackup.cli import main

main()
