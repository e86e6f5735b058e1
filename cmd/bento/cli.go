package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/bento-go/bento/config"
)

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2
)

// env is what a command may touch of the process.
type env struct {
	stdout, stderr io.Writer
	environ        func() []string
}

// command is one subcommand.
type command struct {
	name  string
	short string
	usage string // extra usage text
	// flags adds the command's own flags to fs.
	flags func(fs *flag.FlagSet)
	// noConfig: the command needs no configuration (version).
	noConfig bool
	// args: the command takes positional arguments (inv.fs.Args()).
	args bool
	// defaults replaces settings' defaults for this command, by setting
	// name (bench's own database); file, environment and flags still win.
	defaults map[string]string
	run      func(ctx context.Context, inv *invocation) int
}

// invocation is one run of a command, with its parsed flags and config.
type invocation struct {
	env
	name   string   // the command's name
	args   []string // positional arguments (commands with args)
	fs     *flag.FlagSet
	cfg    config.Config
	logger *slog.Logger
}

func commands() []command {
	return []command{
		migrateCommand(),
		healthCommand(),
		infoCommand(),
		serveCommand(),
		relayCommand(),
		outboxCommand(),
		consumeCommand(),
		benchCommand(),
		versionCommand(),
	}
}

func run(ctx context.Context, args []string, e env) int {
	cmds := commands()
	if len(args) == 0 {
		topUsage(e.stderr, cmds)
		return exitConfig
	}
	if args[0] == "help" && len(args) > 1 {
		args = []string{args[1], "--help"}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		topUsage(e.stdout, cmds)
		return exitOK
	}
	for _, c := range cmds {
		if c.name == args[0] {
			return c.invoke(ctx, args[1:], e)
		}
	}
	fmt.Fprintf(e.stderr, "bento: unknown command %q; accepted: %s (see bento --help)\n", args[0], commandNames(cmds))
	return exitConfig
}

func commandNames(cmds []command) string {
	names := make([]string, len(cmds))
	for i, c := range cmds {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

func topUsage(w io.Writer, cmds []command) {
	fmt.Fprintf(w, "bento: a persistence framework for ent services.\n\nUsage:\n  bento <command> [flags]\n\nCommands:\n")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.short)
	}
	fmt.Fprintf(w, "\nEvery command takes --help. Settings come from defaults < --config FILE < environment < flags.\n")
}

// invoke parses flags, loads the configuration and runs the command.
func (c command) invoke(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("bento "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configFile := fs.String("config", "", "optional YAML configuration `file`")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	settings := config.Settings()
	for _, s := range settings {
		def := s.Default
		if v, ok := c.defaults[s.Name]; ok {
			def = v
		}
		fs.String(s.Flag(), "", fmt.Sprintf("%s (env %s, default %q)", s.Usage, s.Name, def))
	}
	if c.flags != nil {
		c.flags(fs)
	}
	// Flags may come before and after positional arguments.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.printUsage(e.stdout, fs)
				return exitOK
			}
			fmt.Fprintf(e.stderr, "bento %s: %v (see bento %s --help)\n", c.name, err, c.name)
			return exitConfig
		}
		if fs.NArg() == 0 || !c.args {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if fs.NArg() > 0 && !c.args {
		fmt.Fprintf(e.stderr, "bento %s: unexpected argument %q (see bento %s --help)\n", c.name, fs.Arg(0), c.name)
		return exitConfig
	}
	set := map[string]string{}
	byFlag := map[string]string{}
	for _, s := range settings {
		byFlag[s.Flag()] = s.Name
	}
	fs.Visit(func(f *flag.Flag) {
		if name, ok := byFlag[f.Name]; ok {
			set[name] = f.Value.String()
		}
	})
	if c.noConfig {
		return c.run(ctx, &invocation{env: e, name: c.name, args: positional, fs: fs, logger: slog.New(slog.DiscardHandler)})
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(e.stderr, "bento %s: --log-level=%q: %v; accepted: debug, info, warn, error\n", c.name, *logLevel, err)
		return exitConfig
	}
	cfg, err := config.Load(config.Source{File: *configFile, Environ: e.environ, Flags: set, Defaults: c.defaults})
	if err != nil {
		fmt.Fprintf(e.stderr, "bento %s: bad configuration: %s\n", c.name, oneLine(err))
		return exitConfig
	}
	if cfg.DB.Echo && level > slog.LevelDebug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	return c.run(ctx, &invocation{env: e, name: c.name, args: positional, fs: fs, cfg: cfg, logger: logger})
}

func (c command) printUsage(w io.Writer, fs *flag.FlagSet) {
	args := ""
	if c.args {
		args = " <subcommand>"
	}
	fmt.Fprintf(w, "bento %s: %s\n\nUsage:\n  bento %s%s [flags]\n", c.name, c.short, c.name, args)
	if c.usage != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.usage))
	}
	fmt.Fprintf(w, "\nFlags:\n")
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.SliceStable(names, func(i, j int) bool {
		// Command flags first, then settings.
		si, sj := isSetting(names[i]), isSetting(names[j])
		if si != sj {
			return !si
		}
		return false
	})
	for _, n := range names {
		fmt.Fprintf(w, "  --%s\n      %s\n", n, withDefault(fs.Lookup(n)))
	}
}

// withDefault returns a flag's usage with its default, unless the usage
// already states it (settings, and flags whose default is a rule).
func withDefault(f *flag.Flag) string {
	_, usage := flag.UnquoteUsage(f) // "to `file`" reads "to file"
	if strings.Contains(usage, "default") {
		return usage
	}
	def := f.DefValue
	if def == "" {
		def = "none"
	}
	return fmt.Sprintf("%s (default %s)", usage, def)
}

// durationFlag is a flag.Value for a duration in Go syntax (10s, 1m30s) or
// plain seconds (10, 0.5), as settings accept (config.ParseDuration).
type durationFlag struct{ d *time.Duration }

// durationVar defines a duration flag that also accepts plain seconds.
func durationVar(fs *flag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var(durationFlag{p}, name, usage)
}

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(v string) error {
	d, err := config.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%v; accepted: a duration such as 10s, 1m30s, 500ms, or plain seconds such as 10 or 0.5", err)
	}
	*f.d = d
	return nil
}

func isSetting(flagName string) bool {
	return strings.HasPrefix(flagName, "db-") || strings.HasPrefix(flagName, "outbox-") ||
		strings.HasPrefix(flagName, "drain-") || strings.HasPrefix(flagName, "retry-")
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// oneLine joins a multi-line error into one line.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// fail prints one line, "bento <command>: <what>: <error>", and returns
// exitFail, or exitConfig when the error is a bad setting. The library's
// own "bento: <command>: " prefix is dropped: the line already says it.
func (inv *invocation) fail(what string, err error) int {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "bento: ")
	msg = strings.TrimPrefix(msg, inv.name+": ")
	if what != "" {
		msg = what + ": " + msg
	}
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\n\t", " "), "\n", "; ")
	fmt.Fprintf(inv.stderr, "bento %s: %s\n", inv.name, msg)
	var ce *config.Error
	if errors.As(err, &ce) {
		return exitConfig
	}
	return exitFail
}
