import sys

from lstmq.cli import main

sys.exit(main())
