"""What the job entry points share: session, table IO, validation, transforms, executor inference."""
