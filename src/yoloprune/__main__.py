from yoloprune.cli import main

raise SystemExit(main())
