// Package envflag reads a service's settings from environment variables
// (12-factor, the way Fly passes them) with a command-line flag for each, so
// local runs can override one without exporting it. Every setting is declared
// once, with its default and a line of help, and the flag name is derived from
// the variable: PING_INTERVAL is -ping-interval.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Loader collects settings, then parses the environment and arguments.
type Loader struct {
	fs       *flag.FlagSet
	getenv   func(string) string
	settings []Setting
	errs     []error // bad environment values, reported by Parse
}

// Setting describes one declared setting, for documentation and checks.
type Setting struct {
	Env, Flag, Default, Help string
}

// New returns a Loader for the program name, reading the environment through
// getenv and writing usage to out.
func New(name string, getenv func(string) string, out io.Writer) *Loader {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return &Loader{fs: fs, getenv: getenv}
}

// Env reads a variable that is not a setting of its own, such as those Fly
// sets (FLY_REGION, FLY_MACHINE_ID).
func (l *Loader) Env(name string) string { return l.getenv(name) }

// Settings lists what has been declared so far, in order.
func (l *Loader) Settings() []Setting { return l.settings }

// String declares a string setting.
func (l *Loader) String(p *string, env, def, help string) {
	l.declare((*stringValue)(p), env, def, help)
}

// Int declares an integer setting.
func (l *Loader) Int(p *int, env string, def int, help string) {
	l.declare((*intValue)(p), env, strconv.Itoa(def), help)
}

// Float declares a decimal number setting.
func (l *Loader) Float(p *float64, env string, def float64, help string) {
	l.declare((*floatValue)(p), env, strconv.FormatFloat(def, 'g', -1, 64), help)
}

// Duration declares a duration setting, written as Go durations: "3s", "250ms".
func (l *Loader) Duration(p *time.Duration, env string, def time.Duration, help string) {
	l.declare((*durationValue)(p), env, def.String(), help)
}

func (l *Loader) declare(v flag.Value, env, def, help string) {
	name := strings.ToLower(strings.ReplaceAll(env, "_", "-"))
	l.settings = append(l.settings, Setting{Env: env, Flag: name, Default: def, Help: help})
	if err := v.Set(def); err != nil {
		panic(fmt.Sprintf("envflag: default of %s: %v", env, err)) // a programming error
	}
	if s := l.getenv(env); s != "" {
		if err := v.Set(s); err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s=%q: %v", env, s, err))
		}
	}
	l.fs.Var(v, name, help+" (env "+env+")")
}

// Parse parses args (without the program name). It reports every bad
// environment value at once, and returns flag.ErrHelp for -h.
func (l *Loader) Parse(args []string) error {
	if err := l.fs.Parse(args); err != nil {
		return err
	}
	if l.fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", l.fs.Args())
	}
	return errors.Join(l.errs...)
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("not an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type floatValue float64

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("not a number")
	}
	*v = floatValue(f)
	return nil
}
func (v *floatValue) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(`not a duration like "3s" or "250ms"`)
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
