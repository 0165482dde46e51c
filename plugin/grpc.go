package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	trainerpb "github.com/ollama-tune/ollama-tune/plugin/proto"
)

// pluginName is the one plugin a trainer binary serves (go-plugin's Dispense key).
const pluginName = "trainer"

// MagicCookieKey and MagicCookieValue make a trainer binary refuse to run
// unless started by ollama-tune (go-plugin prints a hint when run by hand).
const (
	MagicCookieKey   = "OLLAMA_TUNE_PLUGIN"
	MagicCookieValue = "trainer-5b1f7c0e"
)

// protocolVersionOverride lets a build speak another protocol version without
// editing ProtocolVersion:
//
//	go build -ldflags "-X github.com/ollama-tune/ollama-tune/plugin.protocolVersionOverride=2"
//
// The tests use it to build a stale plugin; nothing else should.
var protocolVersionOverride string

// servedProtocolVersion is the protocol version this binary speaks.
func servedProtocolVersion() int {
	if v, err := strconv.Atoi(protocolVersionOverride); err == nil && v > 0 {
		return v
	}
	return ProtocolVersion
}

// Handshake is the go-plugin handshake both ends use.
func Handshake() goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{
		ProtocolVersion:  uint(servedProtocolVersion()),
		MagicCookieKey:   MagicCookieKey,
		MagicCookieValue: MagicCookieValue,
	}
}

// GRPCPlugin is the go-plugin glue: it serves Impl in a plugin and hands the
// host a Trainer backed by a gRPC client. net/rpc is not supported.
type GRPCPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl Trainer // plugin side only
}

func (p *GRPCPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	trainerpb.RegisterTrainerServer(s, &grpcServer{impl: p.Impl})
	return nil
}

func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &grpcClient{client: trainerpb.NewTrainerClient(c)}, nil
}

// pluginSet is what both ends register under the handshake's version.
func pluginSet(impl Trainer) goplugin.PluginSet {
	return goplugin.PluginSet{pluginName: &GRPCPlugin{Impl: impl}}
}

// ---- host side: Trainer over a gRPC client ----

type grpcClient struct {
	client trainerpb.TrainerClient
}

func (c *grpcClient) Capabilities(ctx context.Context) (Capabilities, error) {
	resp, err := c.client.Capabilities(ctx, &trainerpb.CapabilitiesRequest{})
	if err != nil {
		return Capabilities{}, fromStatus("capabilities", err)
	}
	return capabilitiesFromProto(resp), nil
}

func (c *grpcClient) Train(ctx context.Context, req TrainRequest) (EventStream, error) {
	stream, err := c.client.Train(ctx, &trainerpb.TrainRequest{
		Config:    req.Config,
		OutputDir: req.OutputDir,
		Resume:    req.Resume,
	})
	if err != nil {
		return nil, fromStatus("train", err)
	}
	return &grpcEventStream{stream: stream}, nil
}

func (c *grpcClient) Cancel(ctx context.Context, mode CancelMode) error {
	m := trainerpb.CancelRequest_GRACEFUL
	if mode == CancelImmediate {
		m = trainerpb.CancelRequest_IMMEDIATE
	}
	_, err := c.client.Cancel(ctx, &trainerpb.CancelRequest{Mode: m})
	return fromStatus("cancel", err)
}

func (c *grpcClient) Generate(ctx context.Context, req GenerateRequest) (GenerateResponse, error) {
	resp, err := c.client.Generate(ctx, &trainerpb.GenerateRequest{
		ModelDir:     req.ModelDir,
		AdapterDir:   req.AdapterDir,
		PromptIds:    req.PromptIDs,
		Prompt:       req.Prompt,
		MaxNewTokens: int32(req.MaxNewTokens),
		Temperature:  req.Temperature,
		TopP:         req.TopP,
		Seed:         req.Seed,
	})
	if err != nil {
		return GenerateResponse{}, fromStatus("generate", err)
	}
	return GenerateResponse{IDs: resp.GetIds(), Text: resp.GetText()}, nil
}

type grpcEventStream struct {
	stream grpc.ServerStreamingClient[trainerpb.Event]
}

func (s *grpcEventStream) Recv() (Event, error) {
	for {
		pe, err := s.stream.Recv()
		if err == io.EOF {
			return nil, io.EOF
		}
		if err != nil {
			return nil, fromStatus("train: receive event", err)
		}
		if ev := eventFromProto(pe); ev != nil {
			return ev, nil
		}
		// An event kind from a newer plugin: skip it (adding kinds is not a
		// protocol break).
	}
}

// transportError is a failure of the connection to the plugin rather than an
// answer from it; the host checks whether the plugin process died.
type transportError struct {
	op  string
	err error
}

func (e *transportError) Error() string { return fmt.Sprintf("%s: %v", e.op, e.err) }
func (e *transportError) Unwrap() error { return e.err }

// ---- plugin side: gRPC server over a Trainer ----

type grpcServer struct {
	trainerpb.UnimplementedTrainerServer
	impl Trainer
}

func (s *grpcServer) Capabilities(ctx context.Context, _ *trainerpb.CapabilitiesRequest) (*trainerpb.CapabilitiesResponse, error) {
	caps, err := s.impl.Capabilities(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return capabilitiesToProto(caps), nil
}

func (s *grpcServer) Train(req *trainerpb.TrainRequest, srv grpc.ServerStreamingServer[trainerpb.Event]) error {
	events, err := s.impl.Train(srv.Context(), TrainRequest{
		Config:    req.GetConfig(),
		OutputDir: req.GetOutputDir(),
		Resume:    req.GetResume(),
	})
	if err != nil {
		return toStatus(err)
	}
	for {
		ev, err := events.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return toStatus(err)
		}
		if err := srv.Send(eventToProto(ev)); err != nil {
			// The host is gone; srv.Context() is cancelled, which stops the run.
			return err
		}
	}
}

func (s *grpcServer) Cancel(ctx context.Context, req *trainerpb.CancelRequest) (*trainerpb.CancelResponse, error) {
	mode := CancelGraceful
	if req.GetMode() == trainerpb.CancelRequest_IMMEDIATE {
		mode = CancelImmediate
	}
	if err := s.impl.Cancel(ctx, mode); err != nil {
		return nil, toStatus(err)
	}
	return &trainerpb.CancelResponse{WasRunning: true}, nil
}

func (s *grpcServer) Generate(ctx context.Context, req *trainerpb.GenerateRequest) (*trainerpb.GenerateResponse, error) {
	resp, err := s.impl.Generate(ctx, GenerateRequest{
		ModelDir:     req.GetModelDir(),
		AdapterDir:   req.GetAdapterDir(),
		PromptIDs:    req.GetPromptIds(),
		Prompt:       req.GetPrompt(),
		MaxNewTokens: int(req.GetMaxNewTokens()),
		Temperature:  req.GetTemperature(),
		TopP:         req.GetTopP(),
		Seed:         req.GetSeed(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &trainerpb.GenerateResponse{Ids: resp.IDs, Text: resp.Text}, nil
}

// ---- errors across the wire ----

// Error codes travel as gRPC status codes, so a *TrainError keeps its code.
var codeToGRPC = map[ErrorCode]codes.Code{
	CodeInvalidConfig: codes.InvalidArgument,
	CodeOutOfMemory:   codes.ResourceExhausted,
	CodeDevice:        codes.FailedPrecondition,
	CodeCancelled:     codes.Canceled,
	CodeUnimplemented: codes.Unimplemented,
	CodeInternal:      codes.Internal,
}

func toStatus(err error) error {
	var te *TrainError
	if errors.As(err, &te) {
		return status.Error(codeToGRPC[te.Code], te.Message)
	}
	return status.Error(codeToGRPC[CodeOf(err)], err.Error())
}

// fromStatus turns a gRPC error back into a *TrainError when the plugin
// answered with one, and into a *transportError when the connection failed.
func fromStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return &transportError{op: op, err: err}
	}
	if st.Code() == codes.Unavailable {
		return &transportError{op: op, err: err}
	}
	for code, gc := range codeToGRPC {
		if gc == st.Code() {
			return fmt.Errorf("%s: %w", op, &TrainError{Code: code, Message: st.Message()})
		}
	}
	return fmt.Errorf("%s: %s", op, st.Message())
}

// ---- conversions ----

func capabilitiesToProto(c Capabilities) *trainerpb.CapabilitiesResponse {
	out := &trainerpb.CapabilitiesResponse{
		Backend:         c.Backend,
		Optimizers:      c.Optimizers,
		ProtocolVersion: int32(c.ProtocolVersion),
		TrainerVersion:  c.TrainerVersion,
	}
	for _, d := range c.Devices {
		out.Devices = append(out.Devices, &trainerpb.Device{
			Name: d.Name, TotalMemory: d.TotalMemory, FreeMemory: d.FreeMemory, Detail: d.Detail,
		})
	}
	for _, d := range c.ComputeDTypes {
		out.ComputeDtypes = append(out.ComputeDtypes, &trainerpb.DType{Name: d.Name, Emulated: d.Emulated})
	}
	return out
}

func capabilitiesFromProto(p *trainerpb.CapabilitiesResponse) Capabilities {
	c := Capabilities{
		Backend:         p.GetBackend(),
		Optimizers:      p.GetOptimizers(),
		ProtocolVersion: int(p.GetProtocolVersion()),
		TrainerVersion:  p.GetTrainerVersion(),
	}
	for _, d := range p.GetDevices() {
		c.Devices = append(c.Devices, Device{
			Name: d.GetName(), TotalMemory: d.GetTotalMemory(), FreeMemory: d.GetFreeMemory(), Detail: d.GetDetail(),
		})
	}
	for _, d := range p.GetComputeDtypes() {
		c.ComputeDTypes = append(c.ComputeDTypes, DType{Name: d.GetName(), Emulated: d.GetEmulated()})
	}
	return c
}

func eventToProto(ev Event) *trainerpb.Event {
	switch e := ev.(type) {
	case Started:
		return &trainerpb.Event{Kind: &trainerpb.Event_Started{Started: &trainerpb.Started{
			TotalSteps: e.TotalSteps, StartStep: e.StartStep, ResumedFrom: e.ResumedFrom,
			Device: e.Device, TrainableParams: e.TrainableParams, TotalParams: e.TotalParams,
		}}}
	case Step:
		return &trainerpb.Event{Kind: &trainerpb.Event_Step{Step: &trainerpb.Step{
			Step: e.Step, Epoch: e.Epoch, Loss: e.Loss, GradNorm: e.GradNorm, LearningRate: e.LearningRate,
			TokensPerSecond: e.TokensPerSecond, MeanTokenAccuracy: e.MeanTokenAccuracy,
		}}}
	case Eval:
		return &trainerpb.Event{Kind: &trainerpb.Event_Eval{Eval: &trainerpb.Eval{
			Step: e.Step, Loss: e.Loss, MeanTokenAccuracy: e.MeanTokenAccuracy,
		}}}
	case CheckpointSaved:
		return &trainerpb.Event{Kind: &trainerpb.Event_CheckpointSaved{CheckpointSaved: &trainerpb.CheckpointSaved{
			Step: e.Step, Path: e.Path,
		}}}
	case Finished:
		return &trainerpb.Event{Kind: &trainerpb.Event_Finished{Finished: &trainerpb.Finished{
			AdapterDir: e.AdapterDir, FinalLoss: e.FinalLoss, Steps: e.Steps,
		}}}
	case Failed:
		return &trainerpb.Event{Kind: &trainerpb.Event_Failed{Failed: &trainerpb.Failed{
			Code: string(e.Code), Message: e.Message,
		}}}
	case Log:
		return &trainerpb.Event{Kind: &trainerpb.Event_Log{Log: &trainerpb.Log{Level: e.Level, Message: e.Message}}}
	}
	// Unreachable for the sealed Event types; keep the stream well-formed.
	return &trainerpb.Event{Kind: &trainerpb.Event_Log{Log: &trainerpb.Log{
		Level: "warn", Message: fmt.Sprintf("unknown event %T", ev),
	}}}
}

func eventFromProto(p *trainerpb.Event) Event {
	switch k := p.GetKind().(type) {
	case *trainerpb.Event_Started:
		e := k.Started
		return Started{
			TotalSteps: e.GetTotalSteps(), StartStep: e.GetStartStep(), ResumedFrom: e.GetResumedFrom(),
			Device: e.GetDevice(), TrainableParams: e.GetTrainableParams(), TotalParams: e.GetTotalParams(),
		}
	case *trainerpb.Event_Step:
		e := k.Step
		return Step{
			Step: e.GetStep(), Epoch: e.GetEpoch(), Loss: e.GetLoss(), GradNorm: e.GetGradNorm(),
			LearningRate: e.GetLearningRate(), TokensPerSecond: e.GetTokensPerSecond(),
			MeanTokenAccuracy: e.GetMeanTokenAccuracy(),
		}
	case *trainerpb.Event_Eval:
		e := k.Eval
		return Eval{Step: e.GetStep(), Loss: e.GetLoss(), MeanTokenAccuracy: e.GetMeanTokenAccuracy()}
	case *trainerpb.Event_CheckpointSaved:
		return CheckpointSaved{Step: k.CheckpointSaved.GetStep(), Path: k.CheckpointSaved.GetPath()}
	case *trainerpb.Event_Finished:
		e := k.Finished
		return Finished{AdapterDir: e.GetAdapterDir(), FinalLoss: e.GetFinalLoss(), Steps: e.GetSteps()}
	case *trainerpb.Event_Failed:
		code := ErrorCode(k.Failed.GetCode())
		if code == "" {
			code = CodeInternal
		}
		return Failed{Code: code, Message: k.Failed.GetMessage()}
	case *trainerpb.Event_Log:
		return Log{Level: k.Log.GetLevel(), Message: k.Log.GetMessage()}
	}
	return nil
}
