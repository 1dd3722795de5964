from transcribed.cli import main

raise SystemExit(main())
