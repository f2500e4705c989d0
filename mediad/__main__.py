from mediad.cli import app

app()
