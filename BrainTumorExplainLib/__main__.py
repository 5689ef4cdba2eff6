from .app.cli import main
from .ranks import leave

leave(main())
