import sys

from webhookd.cli import main

sys.exit(main())
