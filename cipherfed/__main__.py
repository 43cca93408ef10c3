from cipherfed.cli import main

raise SystemExit(main())
