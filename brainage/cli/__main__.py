from brainage.cli import main

raise SystemExit(main())
