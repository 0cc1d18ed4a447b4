from nhidel.cli import main

raise SystemExit(main())
