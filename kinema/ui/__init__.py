"""The web UI (`kinema serve`): `forms` (the tabs as the CLI's options), `runner` (the line of jobs),
`history` (the output folder), `app` (the Gradio page; the only module that imports gradio)."""
