from transcribed.cli.main import main

raise SystemExit(main())
