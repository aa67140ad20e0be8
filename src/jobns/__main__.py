from jobns.cli import main

raise SystemExit(main())
