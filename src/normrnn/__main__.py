from normrnn.cli import main
import sys
sys.exit(main())
