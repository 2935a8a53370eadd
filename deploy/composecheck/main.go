// composecheck loads a compose file with compose-go, the loader docker compose itself uses: the file
// is validated against the Compose Specification's JSON schema and its semantics (references between
// services, healthchecks, durations), with no engine. It prints the normalized project as JSON, for
// tests to assert on, or the loader's error and exit status 1.
//
//	go run . ../../docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions([]string{os.Args[1]}, cli.WithName("roomcast"))
	if err == nil {
		var project *types.Project
		if project, err = opts.LoadProject(context.Background()); err == nil {
			var out []byte
			if out, err = project.MarshalJSON(); err == nil {
				os.Stdout.Write(out)
				return
			}
		}
	}
	fmt.Fprintln(os.Stderr, "compose file invalid:", err)
	os.Exit(1)
}
